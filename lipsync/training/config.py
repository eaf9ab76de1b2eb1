"""``lipsync train CONFIG``: the typed training configuration, read from JSON (unknown keys are errors).

Example (``configs/training/tiny.json``, ``configs/training/base-512.json``)::

    {"data": "shards/", "output_dir": "runs/exp1",
     "init": {"model": "base", "weights": "/models/LTX-Video", "stock_ltx": true, "audio_encoder": "/models/whisper-tiny"},
     "trainable": "all", "max_steps": 20000, "mixed_precision": "bf16", "gradient_checkpointing": true,
     "optim": {"lr": 1e-5}, "objective": {"frame_block_width": 136}, "checkpoint_every": 1000}
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lipsync.training.objective import ObjectiveConfig

TRAINABLE = ("all", "new_modules", "lora")


@dataclass(frozen=True)
class InitConfig:
    """Where the weights start.

    Args:
        model: preset (``tiny``, ``base``) or model config JSON: the lip-sync module sizes and pipeline settings.
        weights: None (random init of ``model``), one of our checkpoints (``save_pretrained`` layout), or with
            ``stock_ltx`` a stock LTX-Video folder in diffusers layout (transformer/, vae/, text_encoder/,
            tokenizer/, scheduler/); its lip-sync modules start fresh (zero gates: LTX-Video's behaviour).
        audio_encoder: a Whisper checkpoint folder (config.json + model.safetensors); required with ``stock_ltx``.
        init_seed: seed of the random initialisation.
    """

    model: str = "tiny"
    weights: str | None = None
    stock_ltx: bool = False
    audio_encoder: str | None = None
    init_seed: int = 0


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant_with_warmup"  # any of diffusers.optimization.get_scheduler's names
    warmup_steps: int = 0


@dataclass(frozen=True)
class LoraConfigSection:
    rank: int = 16
    alpha: int = 16
    # self- and text-attention projections of every block (the new audio/ID modules train fully)
    target_modules: str = r".*transformer_blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)"


@dataclass(frozen=True)
class EmaConfig:
    enabled: bool = False
    decay: float = 0.999
    export: bool = True  # checkpoints' pipeline/ holds the EMA weights


@dataclass(frozen=True)
class SyncLossConfig:
    """Optional SyncNet loss on decoded mouths; ``weight`` 0 is off. Needs the evaluation package's SyncNet
    (``lipsync.evaluation.syncnet``) and its weights at ``syncnet_weights``; see docs/training.md."""

    weight: float = 0.0
    syncnet_weights: str | None = None


@dataclass(frozen=True)
class ValidationConfig:
    every: int = 0  # optimizer steps; 0 = never
    clips: int = 2  # held-out clips for the validation loss
    render_frames: int = 49  # frames of the first held-out clip rendered through the pipeline
    num_inference_steps: int = 8


@dataclass(frozen=True)
class TrainConfig:
    data: str
    output_dir: str
    init: InitConfig = field(default_factory=InitConfig)
    trainable: str = "all"
    lora: LoraConfigSection = field(default_factory=LoraConfigSection)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    sync_loss: SyncLossConfig = field(default_factory=SyncLossConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    max_steps: int = 1000
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"  # no | bf16 | fp16 (accelerate's)
    gradient_checkpointing: bool = False
    ff_num_splits: int = 1
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 1
    cache_items: int = 0  # EncodeCache size (0: encode every example afresh)
    report_to: str | None = "tensorboard"

    def __post_init__(self):
        if self.trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {TRAINABLE}, got {self.trainable!r}")
        if self.init.stock_ltx and not (self.init.weights and self.init.audio_encoder):
            raise ValueError("init.stock_ltx needs init.weights (the LTX-Video folder) and init.audio_encoder "
                             "(a Whisper checkpoint folder)")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        if self.max_steps < 1 or self.checkpoint_every < 1 or self.gradient_accumulation_steps < 1:
            raise ValueError("max_steps, checkpoint_every and gradient_accumulation_steps must be >= 1")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "TrainConfig":
        return _build(cls, data, source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_train_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read ``path``; ``overrides`` replace top-level keys (the CLI's ``--max-steps``, ``--output-dir``)."""
    data = json.loads(Path(path).read_text())
    data.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(data, str(path))


def _build(cls, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; expected a subset of {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        kind = fields[name].type
        sub = _SECTIONS.get(kind if isinstance(kind, str) else getattr(kind, "__name__", ""))
        if sub is not None:
            kwargs[name] = _build(sub, value, f"{where}: {name}")
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from exc


_SECTIONS = {c.__name__: c for c in (InitConfig, OptimConfig, LoraConfigSection, EmaConfig, SyncLossConfig,
                                     ValidationConfig, ObjectiveConfig)}
