"""Conditioning helpers of the pipio pipeline, shared with training: the input frames seen per range
(``FrameSource``), the audio windows, the masked-video condition, the appearance references, and the latent
packing, coordinates and masks both sampling and the training objective use."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKLLTXVideo
from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .audio_encoder import encode_audio, latent_frame_windows
from .autoencoder_lipsync import encode_chunked, normalize_latents
from .config import PipelineConfig


class FrameSource:
    """The input frames seen per frame range, padded to 8n+1 by repeating the last frame.

    Only views and per-range reads: nothing of size T x H x W is allocated, so with a ``FrameStore`` for the
    frames and masks made on demand the pipeline's host memory stays flat in the video length.
    """

    def __init__(self, frames: np.ndarray, mouth_mask: np.ndarray, generate: np.ndarray, ratio_t: int, ratio_s: int):
        self.frames, self.mouth_mask, self.generate = frames, mouth_mask, generate
        self.ratio_t, self.ratio_s = ratio_t, ratio_s
        num_frames, height, width, _ = frames.shape
        self.padded_frames = (num_frames - 1 + ratio_t - 1) // ratio_t * ratio_t + 1  # 8n+1 >= T
        self.num_latent = (self.padded_frames - 1) // ratio_t + 1
        self.latent_height, self.latent_width = height // ratio_s, width // ratio_s
        self.index = np.minimum(np.arange(self.padded_frames), num_frames - 1)

    def pixel_mask(self, idx: np.ndarray) -> np.ndarray:
        """The region to regenerate for frames ``idx``: the mouth mask, or everything on generate frames."""
        return np.where(self.generate[idx, None, None], np.float32(1.0), self.mouth_mask[idx])

    def read_masked(self, start: int, end: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Padded frames [start, end) as (1, 3, n, H, W) in [-1, 1], the region to regenerate set to 0 (grey)."""
        idx = self.index[start:end]
        pixels = torch.from_numpy(self.frames[idx]).to(device, torch.float32) / 127.5 - 1.0
        keep = 1.0 - torch.from_numpy(self.pixel_mask(idx)).to(device)[..., None]
        return (pixels * keep).permute(3, 0, 1, 2)[None].to(dtype)

    def latent_mask(self) -> np.ndarray:
        """(F, h, w) mask on the latent grid, one latent frame's pixel frames at a time."""
        r = self.ratio_t
        return np.concatenate([
            latent_mouth_mask(self.pixel_mask(self.index[max(0, k * r - r + 1) : k * r + 1]), r, self.ratio_s,
                              first_is_alone=(k == 0))
            for k in range(self.num_latent)])


def encode_audio_windows(audio_encoder: WhisperEncoder, audio: np.ndarray, padded_frames: int, num_latent: int,
                         fps: float, cfg: PipelineConfig, steps_per_frame: int, ratio_t: int) -> torch.Tensor:
    """Waveform on the output timeline -> (F, steps, layers, d) per-latent-frame audio windows (fp32). Only the
    audio the timeline can hear is encoded: the rest never reaches a window."""
    heard = int(np.ceil((padded_frames + cfg.audio_context_frames + 1) / fps * cfg.audio_sample_rate))
    features = encode_audio(audio_encoder, audio[:heard], cfg.audio_sample_rate)
    return latent_frame_windows(features.float(), num_latent, fps, cfg.audio_feature_rate, cfg.audio_context_frames,
                                steps_per_frame, ratio_t)


def encode_condition(vae: AutoencoderKLLTXVideo, source: "FrameSource", chunk_size: int, overlap: int,
                     device: torch.device, dtype: torch.dtype, progress=None) -> torch.Tensor:
    """The inpainting condition: chunk-encoded masked video (grey where regenerated), normalised and packed,
    with the latent mask as one more channel: (1, F*h*w, C + 1) fp32."""
    masked = encode_chunked(vae, lambda s, e: source.read_masked(s, e, device, dtype), source.padded_frames,
                            chunk_size, overlap, progress=progress)
    masked = pack_latents(normalize_latents(vae, masked.float()))  # (1, F*h*w, C)
    return torch.cat([masked, torch.from_numpy(source.latent_mask()).to(device).reshape(1, -1, 1)], dim=2)


def encode_reference_frames(vae: AutoencoderKLLTXVideo, picks: np.ndarray, reference_time_seconds: float,
                            device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, H, W, 3) uint8 reference crops -> clean latent tokens (1, R*h*w, C) and their RoPE coordinates
    (1, 3, R*h*w), time ``reference_time_seconds`` relative to the block (see ``place_references``)."""
    pixels = torch.from_numpy(np.ascontiguousarray(picks)).to(device, torch.float32) / 127.5 - 1.0
    # Each reference is its own single-frame clip (B=R, T=1): a causal VAE encodes it like a first frame.
    moments = vae.encoder(pixels.permute(0, 3, 1, 2)[:, :, None].to(dtype))
    refs = normalize_latents(vae, moments[:, : moments.shape[1] // 2].float())  # (R, C, 1, h, w)
    count, lh, lw = refs.shape[0], refs.shape[-2], refs.shape[-1]
    tokens = refs.permute(0, 2, 3, 4, 1).reshape(1, count * lh * lw, -1)
    coords = latent_coords(1, lh, lw, 1.0, 1, vae.spatial_compression_ratio, device)
    coords[:, 0] = reference_time_seconds
    return tokens.to(dtype), coords.repeat(1, 1, count)


def shift_mu(scheduler_config, seq_len: int) -> float:
    """LTX's resolution-dependent shift ``mu`` for ``seq_len`` tokens of one frame block (sampling and training)."""
    sc = scheduler_config
    return calculate_shift(seq_len, sc.base_image_seq_len, sc.max_image_seq_len, sc.base_shift, sc.max_shift)


def place_references(reference_coords: torch.Tensor | None, video_coords: torch.Tensor,
                     first_token: int) -> torch.Tensor | None:
    """Reference RoPE coordinates for the block whose first video token is ``first_token``: their time
    (``reference_time_seconds``, relative) is offset by that token's time, so every block, at 0 s or at 60 s,
    sees its references at the same distance (training uses the same placement)."""
    if reference_coords is None:
        return None
    placed = reference_coords.clone()
    placed[:, 0] += video_coords[:, 0, first_token : first_token + 1]
    return placed


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, F, h, w) -> (B, F*h*w, C): frame-major, then row, then column (LTX's order, patch 1)."""
    return latents.permute(0, 2, 3, 4, 1).flatten(1, 3)


def unpack_latents(tokens: torch.Tensor, num_frames: int, height: int, width: int) -> torch.Tensor:
    return tokens.reshape(tokens.shape[0], num_frames, height, width, -1).permute(0, 4, 1, 2, 3)


def latent_coords(num_frames: int, height: int, width: int, fps: float, ratio_t: int, ratio_s: int,
                  device: torch.device | str) -> torch.Tensor:
    """(1, 3, F*h*w) RoPE coordinates on the real timeline: time in seconds of each latent frame's last pixel
    frame (LTXConditionPipeline's convention), y and x in pixels."""
    f, y, x = torch.meshgrid(torch.arange(num_frames, dtype=torch.float32), torch.arange(height, dtype=torch.float32),
                             torch.arange(width, dtype=torch.float32), indexing="ij")
    coords = torch.stack([f * ratio_t / fps, y * ratio_s, x * ratio_s]).flatten(1)
    return coords[None].to(device)


def latent_mouth_mask(pixel_mask: np.ndarray, ratio_t: int, ratio_s: int, first_is_alone: bool = True) -> np.ndarray:
    """(T = 8n+1, H, W) pixel mask -> (F, h, w) latent mask (or T = 8 frames -> one latent frame with
    ``first_is_alone=False``): the max over each latent's pixels (frame 0 alone, then 8 frames per latent), so a
    latent is regenerated if any of its pixels is."""
    t, h, w = pixel_mask.shape
    head = pixel_mask[:1] if first_is_alone else pixel_mask[:0]
    tail = pixel_mask[len(head):]
    rest = tail.reshape(-1, ratio_t, h, w).max(axis=1) if len(tail) else tail
    per_latent = np.concatenate([head, rest])
    return per_latent.reshape(-1, h // ratio_s, ratio_s, w // ratio_s, ratio_s).max(axis=(2, 4)).astype(np.float32)


def composite(original: np.ndarray, decoded: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Paste the generated pixels back: ``decoded * m + original * (1 - m)`` rounded to uint8. Where m == 0
    this is exactly the original pixel (x * 1 + y * 0 == x in float32 for finite y)."""
    m = mask[..., None].astype(np.float32)
    out = decoded.astype(np.float32) * m + original.astype(np.float32) * (1.0 - m)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
