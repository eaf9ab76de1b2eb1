"""The LatentSync UNet's pieces, on (batch, channels, frames, height, width) tensors, with the published module
names (so the checkpoint's keys load as they are).

Where diffusers has the exact layer it is used: ``Attention``, ``FeedForward`` (GEGLU), ``Downsample2D`` /
``Upsample2D`` (applied frame by frame), the timestep embedding (in ``unet.py``). Written here: the frame-wise
convolution, the resnet block — whose GroupNorms normalise over **all frames of the segment at once** (the
published ``use_inflated_groupnorm: false``; a 5-D ``nn.GroupNorm``), which diffusers' 2-D resnet cannot do —
the spatial transformer (per-frame GroupNorm; self-attention, audio cross-attention, feed-forward) and the
temporal ("Vanilla motion") module: self-attention across the frames of each spatial position, after a
sinusoidal frame-position encoding kept as a buffer ``pos_encoder.pe`` (it is in the published checkpoint).

``feed_forward_num_splits`` cuts the feed-forward's token axis into that many chunks (the same numbers, less
peak memory). Blocks honour ``gradient_checkpointing`` when gradients are on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import Downsample2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

from lipsync.model.latentsync.config import MotionModuleConfig


def fold_frames(x: torch.Tensor) -> torch.Tensor:
    """(b, c, f, h, w) -> (b*f, c, h, w), batch-major (frame index fastest)."""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def unfold_frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    bf, c, h, w = x.shape
    return x.reshape(bf // frames, frames, c, h, w).permute(0, 2, 1, 3, 4)


class FrameConv(nn.Conv2d):
    """A 2-D convolution applied to every frame."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return unfold_frames(super().forward(fold_frames(x)), x.shape[2])


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm per frame (the published ``use_inflated_groupnorm: true``; not what the checkpoints use)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return unfold_frames(super().forward(fold_frames(x)), x.shape[2])


def segment_group_norm(channels: int, groups: int, eps: float, per_frame: bool) -> nn.GroupNorm:
    """The resnets' and the output's GroupNorm: over all frames of the segment jointly (5-D input) by default."""
    return (FrameGroupNorm if per_frame else nn.GroupNorm)(num_groups=groups, num_channels=channels, eps=eps)


class FrameDownsample(Downsample2D):
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return unfold_frames(super().forward(fold_frames(x)), x.shape[2])


class FrameUpsample(Upsample2D):
    def forward(self, x: torch.Tensor, output_size=None, *args, **kwargs) -> torch.Tensor:
        size = None if output_size is None else tuple(output_size)[-2:]
        return unfold_frames(super().forward(fold_frames(x), size), x.shape[2])


def _split_ff(ff: nn.Module, x: torch.Tensor, splits: int) -> torch.Tensor:
    if splits <= 1 or x.shape[1] < 2:
        return ff(x)
    return torch.cat([ff(chunk) for chunk in x.chunk(splits, dim=1)], dim=1)


class ResnetBlock3D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, *, groups: int, eps: float,
                 output_scale_factor: float = 1.0, per_frame_norm: bool = False):
        super().__init__()
        self.norm1 = segment_group_norm(in_channels, groups, eps, per_frame_norm)
        self.conv1 = FrameConv(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = segment_group_norm(out_channels, groups, eps, per_frame_norm)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = FrameConv(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = (FrameConv(in_channels, out_channels, kernel_size=1) if in_channels != out_channels
                              else None)
        self.output_scale_factor = output_scale_factor

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return (skip + h) / self.output_scale_factor


class TransformerBlock(nn.Module):
    """Self-attention over a frame's positions, cross-attention to that frame's audio tokens, feed-forward."""

    def __init__(self, dim: int, heads: int, head_dim: int, cross_attention_dim: int, audio: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(query_dim=dim, heads=heads, dim_head=head_dim, bias=False)
        if audio:
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = Attention(query_dim=dim, cross_attention_dim=cross_attention_dim, heads=heads,
                                   dim_head=head_dim, bias=False)
        else:
            self.attn2 = None
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.norm3 = nn.LayerNorm(dim)
        self.ff_splits = 1

    def forward(self, x: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        if self.attn2 is not None and audio is not None:  # the published block skips it without audio
            x = self.attn2(self.norm2(x), encoder_hidden_states=audio) + x
        return _split_ff(self.ff, self.norm3(x), self.ff_splits) + x


class SpatialTransformer(nn.Module):
    """The published ``Transformer3DModel``: per-frame GroupNorm, 1x1 conv in/out, one TransformerBlock."""

    def __init__(self, channels: int, heads: int, *, groups: int, cross_attention_dim: int, audio: bool):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [TransformerBlock(channels, heads, channels // heads, cross_attention_dim, audio)])
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, audio: torch.Tensor | None) -> torch.Tensor:
        frames = x.shape[2]
        x = fold_frames(x)
        bf, c, h, w = x.shape
        hidden = self.proj_in(self.norm(x)).permute(0, 2, 3, 1).reshape(bf, h * w, c)
        for block in self.transformer_blocks:
            hidden = block(hidden, audio)
        hidden = self.proj_out(hidden.reshape(bf, h, w, c).permute(0, 3, 1, 2).contiguous())
        return unfold_frames(hidden + x, frames)


class FramePositions(nn.Module):
    """Sinusoidal encoding of the frame index, added before temporal attention (sin on even, cos on odd dims)."""

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32)[:, None]
        rate = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        pe = torch.zeros(1, max_len, dim)
        pe[0, :, 0::2] = torch.sin(position * rate)
        pe[0, :, 1::2] = torch.cos(position * rate)
        self.register_buffer("pe", pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.pe.shape[1]:
            raise ValueError(f"{x.shape[1]} frames in a segment; the temporal encoding has {self.pe.shape[1]}")
        return x + self.pe[:, : x.shape[1]]


class TemporalAttention(Attention):
    """Self-attention across the frames of each spatial position (tokens (b*f, s, c) in and out)."""

    def __init__(self, dim: int, heads: int, head_dim: int, max_len: int | None):
        super().__init__(query_dim=dim, heads=heads, dim_head=head_dim, bias=False)
        self.pos_encoder = FramePositions(dim, max_len) if max_len else None

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:  # type: ignore[override]
        bf, s, c = x.shape
        x = x.reshape(bf // frames, frames, s, c).permute(0, 2, 1, 3).reshape(-1, frames, c)
        if self.pos_encoder is not None:
            x = self.pos_encoder(x)
        out = super().forward(x)
        return out.reshape(bf // frames, s, frames, c).permute(0, 2, 1, 3).reshape(bf, s, c)


class TemporalTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, kinds: tuple[str, ...], max_len: int | None):
        super().__init__()
        for kind in kinds:
            if kind != "Temporal_Self":
                raise ValueError(f"motion module attention {kind!r}: only Temporal_Self is supported")
        self.attention_blocks = nn.ModuleList([TemporalAttention(dim, heads, head_dim, max_len) for _ in kinds])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in kinds])
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)
        self.ff_splits = 1

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = attention(norm(x), frames) + x
        return _split_ff(self.ff, self.ff_norm(x), self.ff_splits) + x


class TemporalTransformer(nn.Module):
    def __init__(self, channels: int, cfg: MotionModuleConfig):
        super().__init__()
        heads = cfg.num_attention_heads
        head_dim = channels // heads // cfg.temporal_attention_dim_div
        inner = heads * head_dim
        max_len = cfg.temporal_position_encoding_max_len if cfg.temporal_position_encoding else None
        self.norm = nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6)  # 32 as published, not the config's
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(inner, heads, head_dim, tuple(cfg.attention_block_types), max_len)
             for _ in range(cfg.num_transformer_block)])
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[2]
        x = fold_frames(x)
        bf, c, h, w = x.shape
        hidden = self.proj_in(self.norm(x).permute(0, 2, 3, 1).reshape(bf, h * w, c))
        for block in self.transformer_blocks:
            hidden = block(hidden, frames)
        hidden = self.proj_out(hidden).reshape(bf, h, w, c).permute(0, 3, 1, 2).contiguous()
        return unfold_frames(hidden + x, frames)


class MotionModule(nn.Module):
    """The published ``VanillaTemporalModule`` (its output projection starts at zero)."""

    def __init__(self, channels: int, cfg: MotionModuleConfig):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, cfg)
        if cfg.zero_initialize:
            nn.init.zeros_(self.temporal_transformer.proj_out.weight)
            nn.init.zeros_(self.temporal_transformer.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.temporal_transformer(x)
