"""LatentSync's StableSyncNet (bytedance/LatentSync ``latentsync/models/stable_syncnet.py``) under the
published state-dict names, our code; configured by the published YAML (``configs/syncnet/*.yaml``).

Two ``DownEncoder2D`` towers: the visual one takes the lower half of ``num_frames`` 256 px face crops stacked
on channels ((N, 3·16, 128, 256), pixels in [-1, 1]); the audio one an (N, 1, 80, 52) mel window (80 mel
bands at 80 frames/s, 16/25 s). Both end in (N, C, 1, 1) and are L2-normalised; sync is cosine similarity.

The published checkpoint ``stable_syncnet.pt`` is ``{"state_dict": …}`` (LatentSync's trainer saves it so,
with ``global_step`` and loss lists beside it, and loads ``ckpt["state_dict"]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn

from lipsync.evaluation.weights import WeightsError, load_strict, read_checkpoint


@dataclass(frozen=True)
class EncoderConfig:
    in_channels: int
    block_out_channels: tuple[int, ...]
    downsample_factors: tuple[int | tuple[int, int], ...]
    attn_blocks: tuple[int, ...]
    dropout: float = 0.0


@dataclass(frozen=True)
class StableSyncNetConfig:
    """The parts of a LatentSync SyncNet YAML the scorer needs; unknown model keys are an error."""

    audio_encoder: EncoderConfig
    visual_encoder: EncoderConfig
    num_frames: int = 16
    resolution: int = 256
    lower_half: bool = True
    latent_space: bool = False
    extra: dict = field(default_factory=dict, compare=False)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "StableSyncNetConfig":
        raw = yaml.safe_load(Path(path).read_text())
        if not isinstance(raw, dict) or "model" not in raw:
            raise WeightsError(f"{path}: not a LatentSync SyncNet config (no `model` section)")
        model, data = raw["model"], raw.get("data") or {}
        unknown = set(model) - {"audio_encoder", "visual_encoder"}
        if unknown:
            raise WeightsError(f"{path}: unknown model keys {sorted(unknown)}")
        return cls(
            audio_encoder=_encoder(model["audio_encoder"], path, "audio_encoder"),
            visual_encoder=_encoder(model["visual_encoder"], path, "visual_encoder"),
            num_frames=int(data.get("num_frames", 16)),
            resolution=int(data.get("resolution", 256)),
            lower_half=bool(data.get("lower_half", True)),
            latent_space=bool(data.get("latent_space", False)),
        )


def _encoder(raw: dict, path: str | Path, name: str) -> EncoderConfig:
    allowed = {"in_channels", "block_out_channels", "downsample_factors", "attn_blocks", "dropout"}
    unknown = set(raw) - allowed
    if unknown:
        raise WeightsError(f"{path}: unknown {name} keys {sorted(unknown)}")
    factors = tuple(tuple(f) if isinstance(f, list) else int(f) for f in raw["downsample_factors"])
    cfg = EncoderConfig(
        in_channels=int(raw["in_channels"]),
        block_out_channels=tuple(int(c) for c in raw["block_out_channels"]),
        downsample_factors=factors,
        attn_blocks=tuple(int(a) for a in raw["attn_blocks"]),
        dropout=float(raw.get("dropout", 0.0)),
    )
    if not len(cfg.block_out_channels) == len(cfg.downsample_factors) == len(cfg.attn_blocks):
        raise WeightsError(f"{path}: {name} lists block_out_channels, downsample_factors, attn_blocks differ in length")
    return cfg


# The published configs/syncnet/syncnet_16_pixel_attn.yaml (LatentSync 1.5's stable_syncnet.pt).
SYNCNET_16_PIXEL_ATTN = StableSyncNetConfig(
    audio_encoder=EncoderConfig(1, (32, 64, 128, 256, 512, 1024, 2048), ((2, 1), 2, 2, 1, 2, 2, (2, 3)), (0, 0, 0, 1, 1, 0, 0)),
    visual_encoder=EncoderConfig(
        48, (64, 128, 256, 256, 512, 1024, 2048, 2048), ((1, 2), 2, 2, 2, 2, 2, 2, 2), (0, 0, 0, 0, 1, 1, 0, 0)
    ),
)


class ResnetDownBlock(nn.Module):
    """GroupNorm-SiLU-conv ×2 with a residual, then an optional strided 3×3 conv (padded on the far sides)."""

    def __init__(self, cin: int, cout: int, downsample: int | tuple[int, int], dropout: float = 0.0, groups: int = 32):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.act_fn = nn.SiLU()
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None
        self.downsample_conv = None if downsample == 1 else nn.Conv2d(cout, cout, 3, stride=downsample)
        # F.pad order is (left, right, top, bottom): pad only along the strided axes, plus one on the far side
        if isinstance(downsample, tuple) and downsample[0] == 1:
            self.pad = (0, 1, 1, 1)
        elif isinstance(downsample, tuple) and downsample[1] == 1:
            self.pad = (1, 1, 0, 1)
        else:
            self.pad = (0, 1, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act_fn(self.norm1(x)))
        h = self.conv2(self.dropout(self.act_fn(self.norm2(h))))
        h = h + (self.conv_shortcut(x) if self.conv_shortcut is not None else x)
        if self.downsample_conv is not None:
            h = self.downsample_conv(F.pad(h, self.pad))
        return h


class AttentionBlock(nn.Module):
    """Self-attention over the H·W positions (8 heads) and a GEGLU feed-forward, residual around both."""

    def __init__(self, dim: int, dropout: float = 0.0, groups: int = 32):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout, activation_fn="geglu")
        self.conv_in = nn.Conv2d(dim, dim, 1)
        self.conv_out = nn.Conv2d(dim, dim, 1)
        self.attn = Attention(query_dim=dim, heads=8, dim_head=dim // 8, dropout=dropout, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.conv_in(self.norm1(x)).flatten(2).transpose(1, 2)  # (b, h·w, c)
        t = self.attn(self.norm2(t)) + t
        t = self.ff(self.norm3(t)) + t
        return self.conv_out(t.transpose(1, 2).reshape(b, c, h, w)) + x


class DownEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        chans = cfg.block_out_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        blocks: list[nn.Module] = []
        prev = chans[0]
        for out, factor, attn in zip(chans, cfg.downsample_factors, cfg.attn_blocks):
            blocks.append(ResnetDownBlock(prev, out, factor, cfg.dropout))
            if attn:
                blocks.append(AttentionBlock(out, cfg.dropout))
            prev = out
        self.down_blocks = nn.ModuleList(blocks)
        self.norm_out = nn.GroupNorm(32, chans[-1], eps=1e-6)
        self.act_fn_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.act_fn_out(self.norm_out(x))


class StableSyncNet(nn.Module):
    def __init__(self, config: StableSyncNetConfig = SYNCNET_16_PIXEL_ATTN):
        super().__init__()
        self.config = config
        self.audio_encoder = DownEncoder(config.audio_encoder)
        self.visual_encoder = DownEncoder(config.visual_encoder)

    def forward(self, frames: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3F, H, W) and (N, 1, 80, L) -> unit (N, C) visual and audio embeddings."""
        v = self.visual_encoder(frames).flatten(1)
        a = self.audio_encoder(mel).flatten(1)
        return F.normalize(v, dim=1), F.normalize(a, dim=1)


def load_stable_syncnet(path: str | Path, config: StableSyncNetConfig | str | Path = SYNCNET_16_PIXEL_ATTN) -> StableSyncNet:
    """``stable_syncnet.pt`` (``{"state_dict": …}``) -> StableSyncNet in eval mode, strictly."""
    if not isinstance(config, StableSyncNetConfig):
        config = StableSyncNetConfig.from_yaml(config)
    if config.latent_space:
        raise WeightsError("latent-space SyncNets (syncnet_16_latent.yaml) need the VAE; only pixel-space ones are scored")
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        keys = sorted(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise WeightsError(f"{path}: expected LatentSync's {{'state_dict': …}} checkpoint, found {keys}")
    model = StableSyncNet(config)
    load_strict(model, ckpt["state_dict"], str(path))
    return model.eval()
