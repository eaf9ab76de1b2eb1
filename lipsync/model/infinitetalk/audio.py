"""InfiniteTalk's audio path (``generate_infinitetalk.py``: ``audio_prepare_single``, ``loudness_norm``,
``get_embedding``; ``src/audio_analysis/wav2vec2.py``; the window in ``wan/multitalk.py``), written anew:

1. 16 kHz mono, integrated loudness (ITU-R BS.1770-4: K-weighting, 400 ms blocks at 75 % overlap, the −70 LUFS
   absolute and −10 LU relative gates — what pyloudnorm computes) normalised to −23 LUFS by one gain; silence
   (|loudness| > 100) and audio shorter than one 400 ms block are left as they are (pyloudnorm raises there);
2. wav2vec2's feature extractor normalisation (zero mean, unit variance), its convolutional features (50 per
   second) linearly interpolated (``align_corners=True``) to one row per video frame, then its projection and
   transformer; the embedding is every layer's output (``hidden_states[1:]``: 12 × 768 per frame);
3. per video frame the rows of frames i−2 … i+2, clamped to the embedding.

The authors assume 25 video frames a second (``video_length = seconds × 25``). We interpolate to the output
timeline's own frames (``num_frames`` rows over the audio the worker fitted to it), so 24, 30 and 60 fps keep
their rate and each frame's window is its own frames' (at 25 fps this is the authors' row count).
"""

from __future__ import annotations

import numpy as np
import torch

SAMPLE_RATE = 16000
TARGET_LUFS = -23.0
WINDOW = 5


def _biquad(kind: str, gain_db: float, q: float, fc: float, rate: int) -> tuple[np.ndarray, np.ndarray]:
    a_ = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * fc / rate
    alpha, cos = np.sin(w0) / (2 * q), np.cos(w0)
    if kind == "high_shelf":
        s = 2 * np.sqrt(a_) * alpha
        b = [a_ * ((a_ + 1) + (a_ - 1) * cos + s), -2 * a_ * ((a_ - 1) + (a_ + 1) * cos),
             a_ * ((a_ + 1) + (a_ - 1) * cos - s)]
        a = [(a_ + 1) - (a_ - 1) * cos + s, 2 * ((a_ - 1) - (a_ + 1) * cos), (a_ + 1) - (a_ - 1) * cos - s]
    else:  # high pass
        b = [(1 + cos) / 2, -(1 + cos), (1 + cos) / 2]
        a = [1 + alpha, -2 * cos, 1 - alpha]
    b, a = np.asarray(b), np.asarray(a)
    return b / a[0], a / a[0]


def integrated_loudness(audio: np.ndarray, rate: int = SAMPLE_RATE, block: float = 0.4) -> float:
    """BS.1770-4 integrated loudness (LUFS) of a mono signal; ValueError when shorter than one block."""
    from scipy.signal import lfilter

    if len(audio) < block * rate:
        raise ValueError(f"audio of {len(audio)} samples is shorter than one {block} s block")
    x = np.asarray(audio, np.float64)
    # K-weighting designed at the signal's rate (pyloudnorm's parameters; at 48 kHz they give BS.1770's table)
    for args in (("high_shelf", 4.0, 1 / np.sqrt(2), 1500.0), ("high_pass", 0.0, 0.5, 38.0)):
        b, a = _biquad(*args, rate)
        x = lfilter(b, a, x)
    step = 0.25
    count = int(np.round((len(x) / rate - block) / (block * step))) + 1
    z = np.array([np.sum(np.square(x[int(block * j * step * rate): int(block * (j * step + 1) * rate)]))
                  for j in range(count)]) / (block * rate)
    with np.errstate(divide="ignore"):
        levels = -0.691 + 10 * np.log10(z)
        gated = z[levels >= -70.0]
        relative = -0.691 + 10 * np.log10(np.mean(gated)) - 10 if len(gated) else -np.inf
        kept = z[(levels > relative) & (levels > -70.0)]
        return float(-0.691 + 10 * np.log10(np.nan_to_num(np.mean(kept)) if len(kept) else 0.0))


def loudness_normalised(audio: np.ndarray) -> tuple[np.ndarray, str]:
    """(audio at −23 LUFS, what was done)."""
    try:
        loudness = integrated_loudness(audio)
    except ValueError:
        return audio, "audio shorter than 0.4 s: loudness not normalised"
    if abs(loudness) > 100:
        return audio, "silent audio: loudness not normalised"
    gain = 10 ** ((TARGET_LUFS - loudness) / 20)
    return (audio.astype(np.float64) * gain).astype(np.float32), f"loudness {loudness:.1f} LUFS -> -23 LUFS"


@torch.no_grad()
def embedding(wav2vec, audio: np.ndarray, num_frames: int, *, device: str = "cpu") -> torch.Tensor:
    """(num_frames, layers, channels) float32 on the CPU: wav2vec2's layer outputs, one row per video frame.
    ``audio`` is already loudness-normalised 16 kHz mono."""
    x = np.asarray(audio, np.float32)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    dtype = next(wav2vec.parameters()).dtype
    values = torch.from_numpy(x)[None].to(device, dtype)
    feats = wav2vec.feature_extractor(values)  # (1, C, T50)
    feats = torch.nn.functional.interpolate(feats.float(), size=num_frames, mode="linear", align_corners=True)
    hidden, _ = wav2vec.feature_projection(feats.transpose(1, 2).to(dtype))
    return torch.stack(layer_outputs(wav2vec.encoder, hidden), dim=2)[0].float().cpu()  # (T, layers, C)


def layer_outputs(encoder, hidden: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's output of wav2vec2's (post-norm, "base") encoder: the stock modules in the stock order
    (positional convolution, layer norm, layers), collected here because transformers 5 gathers
    ``hidden_states`` only at the top-level model."""
    if getattr(encoder.config, "do_stable_layer_norm", False):
        raise ValueError("a stable-layer-norm (large) wav2vec2: chinese-wav2vec2-base is the base architecture")
    hidden = encoder.layer_norm(hidden + encoder.pos_conv_embed(hidden))
    outs = []
    for layer in encoder.layers:
        hidden = layer(hidden)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        outs.append(hidden)
    return outs


def windows(emb: torch.Tensor, start: int, count: int) -> torch.Tensor:
    """(count, 5, layers, channels): rows i−2 … i+2 for frames start … start+count−1, clamped to ``emb``."""
    centres = torch.arange(start, start + count)[:, None] + torch.arange(WINDOW)[None] - WINDOW // 2
    return emb[centres.clamp(0, len(emb) - 1)]


def extended(emb: torch.Tensor, end: int) -> torch.Tensor:
    """The authors' end padding: when a chunk ends at or past the embedding, append the time reversal of its
    last ``end − len + 3`` rows."""
    if end < len(emb):
        return emb
    miss = end - len(emb) + 3
    return torch.cat([emb, emb[-miss:].flip(0)])
