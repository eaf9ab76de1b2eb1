"""The LatentSync 3D UNet: SD-1.5 layout over 16-frame segments, audio as the only cross-attention input, temporal
motion modules in the down and up blocks at the configured resolutions. State-dict keys are the published
checkpoint's (``latentsync_unet.pt``), so it loads strictly.

Input: (B, 13, F, h, w) = noisy latent (4), mask (1), masked-image latent (4), reference latent (4); audio
(B*F, tokens, 384) batch-major, or (B, F, tokens, 384). Output: the predicted noise (B, 4, F, h, w).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from lipsync.model.latentsync.config import UNetConfig
from lipsync.model.latentsync.unet_blocks import (FrameConv, FrameDownsample, FrameUpsample, MotionModule, ResnetBlock3D,
                                          SpatialTransformer, TemporalTransformerBlock, TransformerBlock,
                                          segment_group_norm)


def _run(module: nn.Module, checkpointing: bool, *args):
    if checkpointing and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(module, *args, use_reentrant=False)
    return module(*args)


class _Stage(nn.Module):
    """A down, mid or up block: resnets, optional spatial transformers, optional motion modules, resampler."""

    gradient_checkpointing = False

    def _layer(self, i: int, x, temb, audio):
        ckpt = self.gradient_checkpointing
        x = _run(self.resnets[i], ckpt, x, temb)
        if self.attentions is not None:
            x = _run(self.attentions[i], ckpt, x, audio)
        if self.motion_modules[i] is not None:
            x = _run(self.motion_modules[i], ckpt, x)
        return x


@dataclass
class DeepCache:
    """DeepCache (Ma et al., CVPR 2024) as LatentSync's published inference runs it (``scripts/inference.py``
    ``--enable_deepcache``: the ``DeepCache`` package's ``DeepCacheSDHelper``, ``cache_interval=3``,
    ``cache_branch_id=0``, uniform skipping), our own implementation of the same schedule.

    Step j of the denoising loop (counted from each segment's first step) runs the whole UNet when
    ``j % interval == 0`` and keeps one tensor: what enters the last layer of the last up block. Any other step
    runs only the shallow branch the helper leaves live: the time embedding, ``conv_in``, that last layer (its
    resnet on ``cat(kept, conv_in output)``, its spatial attention and motion module) and the output convolution;
    the helper returns every other down, mid and up module's cached output. The motion modules the helper still
    runs on cached inputs take no time embedding, so they repeat their cached result bit for bit and are not run.
    With 20 steps 7 are full and 13 reuse the cache. ``interval`` 1 is off (every step full).
    """

    interval: int = 3
    kept: torch.Tensor | None = None
    reuse: bool = False

    def at_step(self, step: int) -> "DeepCache":
        """Set up for denoising step ``step`` (0-based, per segment); returns self."""
        self.reuse = self.interval > 1 and step % self.interval != 0 and self.kept is not None
        if not self.reuse:
            self.kept = None
        return self


def _layers(config: UNetConfig, channels: int, n: int, cross: bool, motion: bool):
    heads = config.attention_head_dim
    attentions = nn.ModuleList([
        SpatialTransformer(channels, heads, groups=config.norm_num_groups,
                           cross_attention_dim=config.cross_attention_dim, audio=config.add_audio_layer)
        for _ in range(n)]) if cross else None
    motion_modules = nn.ModuleList([MotionModule(channels, config.motion_module_kwargs) if motion else None
                                    for _ in range(n)])
    return attentions, motion_modules


class DownBlock(_Stage):
    def __init__(self, config: UNetConfig, cin: int, cout: int, temb: int, *, cross: bool, motion: bool,
                 downsample: bool):
        super().__init__()
        n = config.layers_per_block
        self.resnets = nn.ModuleList([
            ResnetBlock3D(cin if i == 0 else cout, cout, temb, groups=config.norm_num_groups, eps=config.norm_eps,
                          per_frame_norm=config.use_inflated_groupnorm) for i in range(n)])
        self.attentions, self.motion_modules = _layers(config, cout, n, cross, motion)
        self.downsamplers = nn.ModuleList([
            FrameDownsample(cout, use_conv=True, out_channels=cout, padding=config.downsample_padding, name="op")
        ]) if downsample else None

    def forward(self, x, temb, audio):
        skips = []
        for i in range(len(self.resnets)):
            x = self._layer(i, x, temb, audio)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(_Stage):
    def __init__(self, config: UNetConfig, channels: int, temb: int):
        super().__init__()
        kw = dict(groups=config.norm_num_groups, eps=config.norm_eps, output_scale_factor=config.mid_block_scale_factor,
                  per_frame_norm=config.use_inflated_groupnorm)
        self.resnets = nn.ModuleList([ResnetBlock3D(channels, channels, temb, **kw) for _ in range(2)])
        self.attentions, self.motion_modules = _layers(config, channels, 1, True, config.motion_module_mid_block)

    def forward(self, x, temb, audio):
        ckpt = self.gradient_checkpointing
        x = _run(self.resnets[0], ckpt, x, temb)
        x = _run(self.attentions[0], ckpt, x, audio)
        if self.motion_modules[0] is not None:
            x = _run(self.motion_modules[0], ckpt, x)
        return _run(self.resnets[1], ckpt, x, temb)


class UpBlock(_Stage):
    def __init__(self, config: UNetConfig, cin: int, cout: int, prev: int, temb: int, *, cross: bool, motion: bool,
                 upsample: bool):
        super().__init__()
        n = config.layers_per_block + 1
        self.resnets = nn.ModuleList([
            ResnetBlock3D((prev if i == 0 else cout) + (cin if i == n - 1 else cout), cout, temb,
                          groups=config.norm_num_groups, eps=config.norm_eps,
                          per_frame_norm=config.use_inflated_groupnorm) for i in range(n)])
        self.attentions, self.motion_modules = _layers(config, cout, n, cross, motion)
        self.upsamplers = nn.ModuleList([FrameUpsample(cout, use_conv=True, out_channels=cout)]) if upsample else None

    def forward(self, x, temb, audio, skips: list, upsample_size=None, cache: DeepCache | None = None):
        last = len(self.resnets) - 1
        for i in range(last + 1):
            if i == last and cache is not None:
                cache.kept = x
            x = torch.cat([x, skips.pop()], dim=1)
            x = self._layer(i, x, temb, audio)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x

    def forward_last_layer(self, kept, temb, audio, skip):
        """The block's last layer alone on ``kept`` (what entered it at the last full step) and its skip."""
        x = self._layer(len(self.resnets) - 1, torch.cat([kept, skip], dim=1), temb, audio)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class LatentSyncUNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        config.validate()
        self.config = config
        ch = config.block_out_channels
        temb = ch[0] * 4
        self.conv_in = FrameConv(config.in_channels, ch[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(ch[0], config.flip_sin_to_cos, config.freq_shift)
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        mm = config.use_motion_module
        self.down_blocks = nn.ModuleList()
        out = ch[0]
        for i, kind in enumerate(config.down_block_types):
            cin, out = out, ch[i]
            motion = mm and 2**i in config.motion_module_resolutions and not config.motion_module_decoder_only
            self.down_blocks.append(DownBlock(config, cin, out, temb, cross=_cross(kind, "Down"), motion=motion,
                                              downsample=i < len(ch) - 1))
        self.mid_block = MidBlock(config, ch[-1], temb)
        rev = list(reversed(ch))
        self.up_blocks = nn.ModuleList()
        out = rev[0]
        for i, kind in enumerate(config.up_block_types):
            prev, out = out, rev[i]
            cin = rev[min(i + 1, len(ch) - 1)]
            motion = mm and 2 ** (len(ch) - 1 - i) in config.motion_module_resolutions
            self.up_blocks.append(UpBlock(config, cin, out, prev, temb, cross=_cross(kind, "Up"), motion=motion,
                                          upsample=i < len(ch) - 1))
        self.conv_norm_out = segment_group_norm(ch[0], config.norm_num_groups, config.norm_eps,
                                                config.use_inflated_groupnorm)
        self.conv_act = nn.SiLU()
        self.conv_out = FrameConv(ch[0], config.out_channels, kernel_size=3, padding=1)
        # the published model starts these at zero (the checkpoint sets them)
        for conv in (self.conv_in, self.conv_out):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        for block in (*self.down_blocks, self.mid_block, *self.up_blocks):
            block.gradient_checkpointing = enabled

    def set_feed_forward_splits(self, splits: int) -> None:
        """Feed-forward chunking over tokens (``feed_forward_num_splits``): same result, lower peak memory."""
        for module in self.modules():
            if isinstance(module, (TransformerBlock, TemporalTransformerBlock)):
                module.ff_splits = max(1, int(splits))

    def forward(self, sample: torch.Tensor, timestep, audio: torch.Tensor | None,
                cache: DeepCache | None = None) -> torch.Tensor:
        """``cache``: a :class:`DeepCache` set up for this step (``cache.at_step(j)``), or None (every module runs)."""
        batch, frames = sample.shape[0], sample.shape[2]
        if audio is not None and audio.dim() == 4:
            audio = audio.reshape(-1, *audio.shape[2:])
        if audio is not None and audio.shape[0] != batch * frames:
            raise ValueError(f"audio for {audio.shape[0]} frames, sample has {batch}x{frames}")
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(-1).expand(batch) if t.numel() == 1 else t
        temb = self.time_embedding(self.time_proj(t).to(self.dtype))

        up_factor = 2 ** (len(self.up_blocks) - 1)
        forward_size = any(s % up_factor for s in sample.shape[-2:])
        x = self.conv_in(sample)
        if cache is not None and cache.reuse:
            x = self.up_blocks[-1].forward_last_layer(cache.kept, temb, audio, x)
            return self.conv_out(self.conv_act(self.conv_norm_out(x)))
        skips = [x]
        for block in self.down_blocks:
            x, res = block(x, temb, audio)
            skips.extend(res)
        x = self.mid_block(x, temb, audio)
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            mine, skips = skips[-n:], skips[:-n]
            size = skips[-1].shape[2:] if forward_size and i < len(self.up_blocks) - 1 else None
            x = block(x, temb, audio, list(mine), size, cache if i == len(self.up_blocks) - 1 else None)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


def _cross(kind: str, where: str) -> bool:
    plain, attn = f"{where}Block3D", f"CrossAttn{where}Block3D"
    if kind not in (plain, attn):
        raise ValueError(f"unet config: unknown {where.lower()} block {kind!r}")
    return kind == attn
