"""Chunked (temporal) encode and decode over diffusers' ``AutoencoderKLLTXVideo``, linearly blended.

Why not diffusers' own ``use_framewise_encoding/decoding``: its encode path is gated on the *decoding* flag, it
takes the chunk length from ``tile_sample_min_num_frames`` (so the schema's 8n+1 chunk maps to n*8), and its
temporal decode drops the *last* pixel frame of each later tile before blending, which misaligns the blend by
one frame (tile 2's first frame is the causal single-frame position 8a, tile 1's overlap starts at 8a+1).
Here the geometry is explicit:

- pixel video of T = 8m+1 frames, chunk C = 8n+1 frames, overlap O (a multiple of 8, at most (C-1)/2),
  stride S = C-1-O;
- chunk i covers pixel frames [i*S, i*S + C) (the last chunk may be shorter, still 8k+1);
- encode: every chunk after the first drops its first latent (the single-frame causal latent of pixel i*S,
  which in the full video is the *last* frame of latent i*S/8), so consecutive chunks share O/8 latents;
- decode: latent chunks of (C-1)/8+1 frames at stride S/8; later chunks drop their first decoded frame, so
  consecutive chunks share exactly O pixel frames;
- shared frames are blended with weights ramping linearly from the earlier to the later chunk.

Both run in memory independent of T: encode keeps only the latents (1/192 of the pixels); decode is a
generator of finished frame ranges, so the caller can composite and drop them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKLLTXVideo

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class ChunkPlan:
    """Where chunks start, in pixel frames, for a video of ``num_frames`` frames."""

    num_frames: int
    chunk_size: int
    overlap: int

    @property
    def stride(self) -> int:
        return self.chunk_size - 1 - self.overlap

    @property
    def starts(self) -> list[int]:
        if self.chunk_size >= self.num_frames:
            return [0]
        starts = [0]
        while starts[-1] + self.chunk_size < self.num_frames:
            starts.append(starts[-1] + self.stride)
        return starts


def plan_chunks(num_frames: int, chunk_size: int, overlap: int, temporal_ratio: int = 8) -> tuple[ChunkPlan, list[str]]:
    """Validate and, where the schema allows a value the latent grid cannot honour, adjust (and say so).

    Returns the plan and human-readable notes about adjustments (the pipeline logs them and returns them).
    """
    if (num_frames - 1) % temporal_ratio:
        raise ValueError(f"num_frames must be {temporal_ratio}n+1, got {num_frames}")
    if chunk_size < temporal_ratio + 1 or (chunk_size - 1) % temporal_ratio:
        raise ValueError(f"vae_chunk_size must be {temporal_ratio}n+1 and >= {temporal_ratio + 1}, got {chunk_size}")
    if not 0 <= overlap < chunk_size:
        raise ValueError(f"vae_overlap_window_width must be in [0, vae_chunk_size), got {overlap}")
    notes = []
    # Chunks must start on a latent boundary, so the overlap is a whole number of latent frames; and it may be
    # at most half a chunk, so that no frame lies in more than two chunks (a pairwise linear blend).
    half = (chunk_size - 1) // 2
    usable = min(overlap - overlap % temporal_ratio, half - half % temporal_ratio)
    if usable != overlap and chunk_size < num_frames:
        notes.append(f"vae_overlap_window_width {overlap} -> {usable}: a multiple of {temporal_ratio} and at most "
                     f"half of vae_chunk_size {chunk_size}")
    return ChunkPlan(num_frames, chunk_size, usable), notes


def _ramp(n: int, like: torch.Tensor) -> torch.Tensor:
    """Weights of the *later* chunk over n shared frames: (j + 0.5) / n, shaped to broadcast over (B,C,n,H,W)."""
    return ((torch.arange(n, dtype=torch.float32, device=like.device) + 0.5) / n).to(like.dtype).view(1, 1, n, 1, 1)


def blend_stream(chunks: Iterator[torch.Tensor], overlap: int) -> Iterator[torch.Tensor]:
    """Yield the finished frames of consecutive chunks (time on dim 2) that share ``overlap`` frames.

    Only the pending tail of the previous chunk is kept, so memory is one chunk whatever the length.
    """
    pending: torch.Tensor | None = None
    for chunk in chunks:
        if pending is not None:
            n = min(overlap, pending.shape[2], chunk.shape[2])
            if n:
                w = _ramp(n, chunk)
                head = pending[:, :, pending.shape[2] - n:] * (1 - w) + chunk[:, :, :n] * w
                yield torch.cat([pending[:, :, : pending.shape[2] - n], head], dim=2)
            elif pending.shape[2]:
                yield pending
            chunk = chunk[:, :, n:]
        keep = chunk.shape[2] - overlap if overlap else chunk.shape[2]
        if keep > 0:
            yield chunk[:, :, :keep]
            pending = chunk[:, :, keep:]
        else:
            pending = chunk
    if pending is not None and pending.shape[2]:
        yield pending


def encode_chunked(vae: AutoencoderKLLTXVideo, read_frames: Callable[[int, int], torch.Tensor], num_frames: int,
                   chunk_size: int, overlap: int, progress: ProgressFn | None = None) -> torch.Tensor:
    """Encode a video of ``num_frames`` (8m+1) frames to posterior-*mode* latents (B, C, (T-1)/8+1, h, w).

    ``read_frames(start, end)`` returns pixel frames [start, end) as (B, 3, n, H, W) in [-1, 1] on the VAE's
    device and dtype, so only one chunk of pixels exists at a time. ``overlap`` must already be planned
    (``plan_chunks``). Latents are returned un-normalised.
    """
    plan = ChunkPlan(num_frames, chunk_size, overlap)
    ratio = vae.temporal_compression_ratio
    starts = plan.starts

    def chunks() -> Iterator[torch.Tensor]:
        for i, start in enumerate(starts):
            moments = vae.encoder(read_frames(start, min(start + chunk_size, num_frames)))
            mode = moments[:, : moments.shape[1] // 2]  # DiagonalGaussian mean (the mode): deterministic
            if progress is not None:
                progress(i + 1, len(starts))
            yield mode if i == 0 else mode[:, :, 1:]

    return torch.cat(list(blend_stream(chunks(), overlap // ratio)), dim=2)


def decode_chunked(vae: AutoencoderKLLTXVideo, latents: torch.Tensor, chunk_size: int, overlap: int,
                   temb: torch.Tensor | None = None, progress: ProgressFn | None = None) -> Iterator[torch.Tensor]:
    """Decode (B, C, F, h, w) un-normalised latents; yields finished pixel frame ranges (B, 3, n, H, W) in order."""
    ratio = vae.temporal_compression_ratio
    num_frames = (latents.shape[2] - 1) * ratio + 1
    plan = ChunkPlan(num_frames, chunk_size, overlap)
    latent_chunk = (chunk_size - 1) // ratio + 1
    starts = [s // ratio for s in plan.starts]

    def chunks() -> Iterator[torch.Tensor]:
        for i, start in enumerate(starts):
            frames = vae.decoder(latents[:, :, start : start + latent_chunk], temb)
            if progress is not None:
                progress(i + 1, len(starts))
            yield frames if i == 0 else frames[:, :, 1:]

    yield from blend_stream(chunks(), overlap)


def normalize_latents(vae: AutoencoderKLLTXVideo, latents: torch.Tensor) -> torch.Tensor:
    """(x - mean) * scaling / std per channel, as LTX pipelines do before the transformer."""
    mean = vae.latents_mean.view(1, -1, 1, 1, 1).to(latents)
    std = vae.latents_std.view(1, -1, 1, 1, 1).to(latents)
    return (latents - mean) * vae.config.scaling_factor / std


def denormalize_latents(vae: AutoencoderKLLTXVideo, latents: torch.Tensor) -> torch.Tensor:
    mean = vae.latents_mean.view(1, -1, 1, 1, 1).to(latents)
    std = vae.latents_std.view(1, -1, 1, 1, 1).to(latents)
    return latents * std / vae.config.scaling_factor + mean
