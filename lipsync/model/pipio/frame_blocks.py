"""Temporal blocks the transformer denoises one at a time (``frame_block_width``), blended where they overlap.

Sliding-window (MultiDiffusion-style) denoising: every step, each block of latent frames predicts its velocity
with its own tokens plus the shared reference tokens, and frames covered by two blocks get a linear ramp from
one block's prediction to the next, so block edges do not jump. RoPE uses global time coordinates, and audio
attention is per latent frame, so a block sees exactly the conditioning the whole clip would give it.
Memory is O(block), attention cost O(block^2) instead of O(clip^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FrameBlock:
    start: int  # first latent frame
    end: int  # one past the last latent frame


def plan_frame_blocks(num_latent_frames: int, frame_block_width: int, temporal_ratio: int = 8) -> list[FrameBlock]:
    """Cut ``num_latent_frames`` into blocks of ``ceil(frame_block_width / 8)`` latent frames.

    Consecutive blocks overlap by a quarter of a block (at least one latent frame when blocks are >= 2 frames);
    the last block is aligned to the end so every block has the same length. A width >= the clip is one block.
    """
    if frame_block_width < 1:
        raise ValueError(f"frame_block_width must be >= 1, got {frame_block_width}")
    width = max(1, math.ceil(frame_block_width / temporal_ratio))
    if width >= num_latent_frames:
        return [FrameBlock(0, num_latent_frames)]
    overlap = min(max(1, width // 4), width - 1)
    stride = width - overlap
    starts = list(range(0, num_latent_frames - width, stride)) + [num_latent_frames - width]
    return [FrameBlock(s, s + width) for s in sorted(set(starts))]


def block_weights(blocks: list[FrameBlock], num_latent_frames: int) -> list[torch.Tensor]:
    """Per-block weights over its frames such that the weights of all blocks sum to 1 at every frame.

    Inside an overlap the earlier block fades out and the later block fades in linearly.
    """
    raw = []
    for i, block in enumerate(blocks):
        w = torch.ones(block.end - block.start, dtype=torch.float64)
        if i > 0 and blocks[i - 1].end > block.start:
            n = blocks[i - 1].end - block.start
            w[:n] = torch.minimum(w[:n], (torch.arange(n, dtype=torch.float64) + 1) / (n + 1))
        if i + 1 < len(blocks) and block.end > blocks[i + 1].start:
            n = block.end - blocks[i + 1].start
            w[-n:] = torch.minimum(w[-n:], 1 - (torch.arange(n, dtype=torch.float64) + 1) / (n + 1))
        raw.append(w)
    total = torch.zeros(num_latent_frames, dtype=torch.float64)
    for block, w in zip(blocks, raw):
        total[block.start : block.end] += w
    # Normalising makes the sum exactly 1 even where the end-aligned last block overlaps by a different amount.
    return [(w / total[b.start : b.end]).float() for b, w in zip(blocks, raw)]
