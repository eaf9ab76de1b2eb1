"""LatentSync configuration: the UNet (the published ``configs/unet/*.yaml`` ``model:`` section) and the run facts
(resolution, segment length, audio window, steps, guidance), from our own files in ``configs/`` or from a weights
folder's ``unet_config.yaml`` in the same format, which then wins. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"
FOLDER_CONFIG = "unet_config.yaml"
"""A weights folder's own configuration (published format); the other sections than data/run/model are ignored."""
VARIANTS = {"latentsync-1.6": "latentsync-1.6.yaml", "latentsync-1.5": "latentsync-1.5.yaml"}


@dataclass(frozen=True)
class MotionModuleConfig:
    num_attention_heads: int = 8
    num_transformer_block: int = 1
    attention_block_types: tuple[str, ...] = ("Temporal_Self", "Temporal_Self")
    temporal_position_encoding: bool = True
    temporal_position_encoding_max_len: int = 24
    temporal_attention_dim_div: int = 1
    zero_initialize: bool = True


@dataclass(frozen=True)
class UNetConfig:
    """The fields of the published ``model:`` section our UNet implements (others are refused, not ignored)."""

    in_channels: int = 13
    out_channels: int = 4
    sample_size: int = 64
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",)
    mid_block_type: str = "UNetMidBlock3DCrossAttn"
    up_block_types: tuple[str, ...] = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3
    layers_per_block: int = 2
    attention_head_dim: int = 8
    """Published name; it is the number of heads (head size = channels // 8)."""
    cross_attention_dim: int = 384
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    act_fn: str = "silu"
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    center_input_sample: bool = False
    resnet_time_scale_shift: str = "default"
    add_audio_layer: bool = True
    use_inflated_groupnorm: bool = False
    use_motion_module: bool = True
    motion_module_resolutions: tuple[int, ...] = (1, 2, 4, 8)
    motion_module_mid_block: bool = False
    motion_module_decoder_only: bool = False
    motion_module_type: str = "Vanilla"
    motion_module_kwargs: MotionModuleConfig = field(default_factory=MotionModuleConfig)

    @classmethod
    def from_dict(cls, section: dict[str, Any]) -> "UNetConfig":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(section) - set(known) - _ACCEPTED_DEFAULTS.keys())
        if unknown:
            raise ValueError(f"unet config: unsupported model fields {unknown}")
        for name, value in _ACCEPTED_DEFAULTS.items():
            if name in section and section[name] != value:
                raise ValueError(f"unet config: {name}={section[name]!r} is not supported (only {value!r})")
        values: dict[str, Any] = {}
        for name, spec in known.items():
            if name not in section:
                continue
            value = section[name]
            if name == "motion_module_kwargs":
                value = MotionModuleConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
            elif isinstance(value, list):
                value = tuple(value)
            elif spec.type == "float":
                value = float(value)  # PyYAML reads the published `1e-5` as a string
            values[name] = value
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if self.motion_module_type != "Vanilla":
            raise ValueError(f"unet config: motion_module_type {self.motion_module_type!r} (only Vanilla)")
        if self.resnet_time_scale_shift != "default":
            raise ValueError("unet config: resnet_time_scale_shift must be 'default'")
        if self.mid_block_type != "UNetMidBlock3DCrossAttn":
            raise ValueError(f"unet config: mid_block_type {self.mid_block_type!r}")
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError("unet config: one down and one up block per block_out_channels entry")


_ACCEPTED_DEFAULTS: dict[str, Any] = {
    "only_cross_attention": False, "dual_cross_attention": False, "use_linear_projection": False,
    "class_embed_type": None, "num_class_embeds": None, "upcast_attention": False,
}
"""Published constructor fields we accept only at their default (the published checkpoints use them so)."""


@dataclass(frozen=True)
class LatentSyncConfig:
    variant: str
    unet: UNetConfig
    resolution: int = 512
    num_frames: int = 16
    """Frames per segment: fixed by training (the temporal layers and GroupNorms span a segment)."""
    audio_feat_length: tuple[int, int] = (2, 2)
    inference_steps: int = 20
    guidance_scale: float = 1.5
    source: str = ""

    @property
    def latent_size(self) -> int:
        return self.resolution // 8


def parse_config(data: dict[str, Any], *, variant: str | None, source: str) -> LatentSyncConfig:
    if "model" not in data:
        raise ValueError(f"{source}: no `model:` section")
    data_section, run = data.get("data") or {}, data.get("run") or {}
    resolution = int(data_section.get("resolution", 512))
    if resolution % 64:
        raise ValueError(f"{source}: data.resolution {resolution} must be a multiple of 64")
    return LatentSyncConfig(
        variant=variant or ("latentsync-1.5" if resolution == 256 else "latentsync-1.6"),
        unet=UNetConfig.from_dict(data["model"]),
        resolution=resolution,
        num_frames=int(data_section.get("num_frames", 16)),
        audio_feat_length=tuple(int(v) for v in data_section.get("audio_feat_length", (2, 2))),
        inference_steps=int(run.get("inference_steps", 20)),
        guidance_scale=float(run.get("guidance_scale", 1.5)),
        source=source,
    )


def load_config(path: Path, *, variant: str | None = None) -> LatentSyncConfig:
    return parse_config(yaml.safe_load(path.read_text()), variant=variant, source=str(path))


def variant_config(variant: str) -> LatentSyncConfig:
    if variant not in VARIANTS:
        raise ValueError(f"unknown LatentSync variant {variant!r}: use one of {', '.join(VARIANTS)}")
    return load_config(CONFIG_DIR / VARIANTS[variant], variant=variant)


def folder_config(root: Path | None, default_variant: str = "latentsync-1.6") -> LatentSyncConfig:
    """The folder's ``unet_config.yaml`` when present (its variant named by its resolution), else ours."""
    if root is not None and (root / FOLDER_CONFIG).is_file():
        return load_config(root / FOLDER_CONFIG)
    return variant_config(default_variant)


def scheduler_config() -> dict[str, Any]:
    import json

    return json.loads((CONFIG_DIR / "scheduler_config.json").read_text())
