"""LatentSync's audio conditioning: whisper-tiny (OpenAI's ``tiny.pt``) run as transformers' ``WhisperEncoder``,
and the published per-frame token window.

Published recipe (``latentsync/whisper``): one log-Mel spectrogram of the whole clip (whisper's: 400-point STFT,
hop 160, 80 Mel bands — librosa's filters, which are whisper's asset — log10, floored 8 below the clip's
maximum, (x + 4) / 4); cut into 3000-frame (30 s) pieces, the last zero-padded; for each piece the encoder's
state after the positional embedding and after each of its blocks — the last one **before** the final
LayerNorm — 5 x 384 per 20 ms step, of which the piece's real half-length is kept. Output frame j (at ``fps``)
gets the 10 steps ``int(j * 50 / fps) - 4 ... + 5`` (clamped to the clip) x 5 layers = 50 tokens of 384.
The guidance's null input is zeros of that shape.

``AudioFeatures`` computes the encoder lazily, one 30 s piece at a time, keeping only the pieces the current
frames need: memory is flat in the clip's length.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 80
PIECE = 3000
"""Mel frames per encoder call (30 s)."""
STEPS_PER_SECOND = 50


# ------------------------------------------------------------------------------------------ weights
def openai_to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI whisper ``model_state_dict`` (encoder part) -> transformers ``WhisperEncoder`` keys."""
    simple = {"conv1.weight": "conv1.weight", "conv1.bias": "conv1.bias", "conv2.weight": "conv2.weight",
              "conv2.bias": "conv2.bias", "positional_embedding": "embed_positions.weight",
              "ln_post.weight": "layer_norm.weight", "ln_post.bias": "layer_norm.bias"}
    block = {"attn.query": "self_attn.q_proj", "attn.key": "self_attn.k_proj", "attn.value": "self_attn.v_proj",
             "attn.out": "self_attn.out_proj", "attn_ln": "self_attn_layer_norm", "mlp.0": "fc1", "mlp.2": "fc2",
             "mlp_ln": "final_layer_norm"}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith("encoder."):
            continue  # the text decoder is not used
        name = key[len("encoder."):]
        if name in simple:
            out[simple[name]] = value
            continue
        parts = name.split(".")  # blocks.{i}.{module...}.{weight|bias}
        if parts[0] != "blocks" or ".".join(parts[2:-1]) not in block:
            raise KeyError(f"whisper checkpoint: unexpected encoder key {key!r}")
        out[f"layers.{parts[1]}.{block['.'.join(parts[2:-1])]}.{parts[-1]}"] = value
    return out


def whisper_config(dims: dict):
    from transformers import WhisperConfig

    return WhisperConfig(num_mel_bins=dims["n_mels"], d_model=dims["n_audio_state"],
                         encoder_layers=dims["n_audio_layer"], encoder_attention_heads=dims["n_audio_head"],
                         encoder_ffn_dim=4 * dims["n_audio_state"], max_source_positions=dims["n_audio_ctx"],
                         decoder_layers=1, decoder_attention_heads=dims.get("n_text_head", dims["n_audio_head"]))


class _Fp32LayerNorm(torch.nn.LayerNorm):
    """OpenAI whisper's ``LayerNorm``: computed in fp32 whatever the input's dtype, the result cast back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def load_whisper_encoder(path: Path, device="cpu", dtype=torch.float32):
    """OpenAI ``tiny.pt`` ({dims, model_state_dict}) -> transformers ``WhisperEncoder``, loaded strictly.

    ``dtype`` fp16 is how the authors' inference runs whisper on a GPU (``transcribe`` with its default
    ``fp16=True``: the mel in fp16, each weight cast to it), with OpenAI's fp32 islands kept: the LayerNorms
    computed in fp32 and the positional embedding an fp32 buffer (the sum cast to fp16, see ``encoder_layers``).
    bf16 is refused: the authors never run whisper in it."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"whisper runs in fp32 or fp16, not {dtype}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise ValueError(f"{path}: not an OpenAI whisper checkpoint (dims + model_state_dict)")
    encoder = WhisperEncoder(whisper_config(ckpt["dims"]))
    encoder.load_state_dict(openai_to_transformers(ckpt["model_state_dict"]), strict=True)
    encoder = encoder.to(device=device, dtype=dtype).eval()
    if dtype == torch.float16:
        for module in encoder.modules():
            if type(module) is torch.nn.LayerNorm:
                module.__class__ = _Fp32LayerNorm
                module.float()
        encoder.embed_positions.float()
    return encoder


# ------------------------------------------------------------------------------------------ features
def log_mel(audio: np.ndarray) -> torch.Tensor:
    """(80, n) whisper log-Mel of a 16 kHz mono clip, normalised by the clip's own maximum (as published)."""
    import librosa

    wav = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    spec = torch.stft(wav, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)
    power = spec[:, :-1].abs() ** 2
    filters = torch.from_numpy(librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS))
    log_spec = torch.clamp(filters @ power, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


@torch.no_grad()
def encoder_layers(encoder, mel_piece: torch.Tensor) -> torch.Tensor:
    """(1500, L+1, d): the state after the positional embedding and after each block (no final LayerNorm)."""
    param = next(encoder.parameters())
    x = mel_piece.to(device=param.device, dtype=param.dtype)[None]
    x = torch.nn.functional.gelu(encoder.conv1(x))
    x = torch.nn.functional.gelu(encoder.conv2(x)).permute(0, 2, 1)
    x = (x + encoder.embed_positions.weight[: x.shape[1]]).to(param.dtype)  # fp16: an fp32 sum, cast (OpenAI's)
    states = [x]
    for layer in encoder.layers:
        x = layer(x, None)
        x = x[0] if isinstance(x, tuple) else x
        states.append(x)
    return torch.stack(states, dim=2)[0]


class AudioFeatures:
    """Per-frame audio tokens (50, 384) for output frames, computed piece by piece as frames ask for them."""

    def __init__(self, encoder, audio: np.ndarray, fps: float, feat_length: tuple[int, int] = (2, 2)):
        self.encoder = encoder
        self.mel = log_mel(audio)
        self.fps = float(fps)
        self.left, self.right = feat_length
        total = self.mel.shape[1]
        # steps kept per piece: int((end - start) / 2), as published
        self.piece_steps = [int((min(s + PIECE, total) - s) / 2) for s in range(0, total, PIECE)]
        self.num_steps = sum(self.piece_steps)
        if self.num_steps == 0:
            raise ValueError("audio shorter than one whisper step (20 ms)")
        self._cache: dict[int, torch.Tensor] = {}

    def _step(self, index: int) -> torch.Tensor:
        piece, offset = divmod(index, PIECE // 2)
        if piece not in self._cache:
            for old in [k for k in self._cache if k < piece - 1]:
                del self._cache[old]
            start = piece * PIECE
            chunk = self.mel[:, start : start + PIECE]
            chunk = torch.nn.functional.pad(chunk, (0, PIECE - chunk.shape[1]))
            self._cache[piece] = encoder_layers(self.encoder, chunk)[: self.piece_steps[piece]].float().cpu()
        return self._cache[piece][offset]

    def window(self, frame: int) -> torch.Tensor:
        """(10 * layers, d): the published window of 20 ms steps around output frame ``frame``."""
        centre = int(frame * STEPS_PER_SECOND / self.fps)
        idx = range(centre - 2 * self.left, centre + 2 * (self.right + 1))
        steps = [self._step(min(max(i, 0), self.num_steps - 1)) for i in idx]
        return torch.cat(steps, dim=0)

    def frames(self, start: int, count: int) -> torch.Tensor:
        """(count, 50, 384) for output frames start .. start + count - 1."""
        return torch.stack([self.window(j) for j in range(start, start + count)])
