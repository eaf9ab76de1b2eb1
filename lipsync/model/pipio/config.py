"""Typed configuration of the lip-sync model, loaded by preset name (``tiny``, ``base``) or JSON path.

The JSON has one section per component. Each component section is exactly the constructor keywords of the
class that is built from it (diffusers' "the constructor signature is the config"), so a key the class does not
take is an error here, at load time, instead of being silently ignored:

- ``transformer``   -> :class:`lipsync.model.pipio.transformer_lipsync.LipSyncTransformer3DModel`
- ``vae``           -> ``diffusers.AutoencoderKLLTXVideo``
- ``scheduler``     -> ``diffusers.FlowMatchEulerDiscreteScheduler``
- ``audio_encoder`` -> ``transformers.WhisperConfig`` (its encoder half is used)
- ``text_encoder``  -> ``transformers.T5Config`` (``T5EncoderModel``)
- ``pipeline``      -> :class:`PipelineConfig` (sampling and conditioning settings that are not weights)
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PRESETS = ("tiny", "base")


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of the sampling loop and of the conditioning that carry no weights.

    Args:
        num_inference_steps: Euler flow-matching steps (8 for a distilled checkpoint, 30 otherwise).
        guidance_scale: audio classifier-free guidance; ``1.0`` runs one pass per step (no guidance),
            ``> 1`` runs a second pass with null (zero) audio features and extrapolates.
        decode_timestep: timestep given to a timestep-conditioned VAE decoder (LTX 0.9.1+); ignored otherwise.
        default_prompt: used when the request has no custom prompt and no captioning model is configured.
        max_prompt_tokens: T5 sequence length (prompts are padded/truncated to it).
        audio_sample_rate: the waveform rate the audio encoder expects (Hz).
        audio_feature_rate: encoder output rate (Hz); Whisper: 100 Hz mel, conv stride 2 -> 50 Hz.
        audio_context_frames: each latent frame hears its own pixel frames plus this many video frames on each side.
        max_reference_frames: at most this many distinct appearance references (the rest is a logit bias).
        face_id_auto_strength_video / face_id_auto_strength_generate: the ``face_id_cond_strength = -1`` rule
            (see ``resolve_face_id_strength``).
        reference_time_seconds: RoPE time of the appearance reference tokens relative to the first frame of the
            frame block they condition (negative: before the block, outside it), the same for every block.
        vae_spatial_multiple: frame height and width must be multiples of this (the VAE's spatial compression).
    """

    num_inference_steps: int = 30
    guidance_scale: float = 1.0
    decode_timestep: float = 0.05
    default_prompt: str = "A high quality video."
    max_prompt_tokens: int = 128
    audio_sample_rate: int = 16000
    audio_feature_rate: int = 50
    audio_context_frames: int = 2
    max_reference_frames: int = 4
    face_id_auto_strength_video: int = 4
    face_id_auto_strength_generate: int = 8
    reference_time_seconds: float = -1.0
    vae_spatial_multiple: int = 32


@dataclass(frozen=True)
class LipSyncConfig:
    """The whole model: one constructor-keyword dict per component plus the pipeline settings."""

    transformer: dict[str, Any]
    vae: dict[str, Any]
    audio_encoder: dict[str, Any]
    text_encoder: dict[str, Any]
    scheduler: dict[str, Any] = field(default_factory=dict)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "LipSyncConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown top-level config keys {unknown}; expected a subset of {sorted(known)}")
        missing = sorted({"transformer", "vae", "audio_encoder", "text_encoder"} - set(data))
        if missing:
            raise ValueError(f"{source}: missing config sections {missing}")
        config = cls(
            transformer=dict(data["transformer"]),
            vae=_listify(dict(data["vae"])),
            audio_encoder=dict(data["audio_encoder"]),
            text_encoder=dict(data["text_encoder"]),
            scheduler=dict(data.get("scheduler", {})),
            pipeline=pipeline_config_from_dict(dict(data.get("pipeline", {})), source),
        )
        config.validate(source)
        return config

    def validate(self, source: str = "<config>") -> None:
        """Check every component section against the constructor it feeds."""
        for name in ("transformer", "vae", "scheduler", "audio_encoder", "text_encoder"):
            self.validate_section(name, getattr(self, name), source)

    @staticmethod
    def validate_section(name: str, section: dict[str, Any], source: str = "<config>") -> None:
        """Raise ValueError naming every key of ``section`` that component ``name``'s constructor does not take.

        The heavy classes are imported here, lazily, so that reading a config needs no torch import.
        """
        from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler
        from transformers import T5Config, WhisperConfig

        from .transformer_lipsync import LipSyncTransformer3DModel

        allowed = {
            "transformer": lambda: _init_params(LipSyncTransformer3DModel),
            "vae": lambda: _init_params(AutoencoderKLLTXVideo),
            "scheduler": lambda: _init_params(FlowMatchEulerDiscreteScheduler),
            "audio_encoder": lambda: set(WhisperConfig().to_dict()),
            "text_encoder": lambda: set(T5Config().to_dict()),
        }
        if name not in allowed:
            raise ValueError(f"unknown component {name!r}")
        _check_keys(section, allowed[name](), f"{source}: {name}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "transformer": self.transformer,
            "vae": self.vae,
            "scheduler": self.scheduler,
            "audio_encoder": self.audio_encoder,
            "text_encoder": self.text_encoder,
            "pipeline": dataclasses.asdict(self.pipeline),
        }


def pipeline_config_from_dict(data: dict[str, Any], source: str = "<dict>") -> PipelineConfig:
    _check_keys(data, {f.name for f in dataclasses.fields(PipelineConfig)}, f"{source}: pipeline")
    return PipelineConfig(**data)


def load_config(name_or_path: str | Path) -> LipSyncConfig:
    """Load a preset by name (``"tiny"``, ``"base"``) from ``configs/`` or a config JSON by path."""
    path = Path(name_or_path)
    if str(name_or_path) in PRESETS:
        path = CONFIG_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no model config {name_or_path!r}: not a preset {PRESETS} and not a file")
    return LipSyncConfig.from_dict(json.loads(path.read_text()), source=str(path))


def _init_params(cls: type) -> set[str]:
    params = inspect.signature(cls.__init__).parameters
    return {name for name in params if name not in ("self", "args", "kwargs")}


def _check_keys(section: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(k for k in section if k not in allowed and not k.startswith("_"))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}")


def _listify(section: dict[str, Any]) -> dict[str, Any]:
    # JSON has no tuples; diffusers' VAE takes tuples but accepts lists. Keep lists so the dict round-trips.
    return {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
