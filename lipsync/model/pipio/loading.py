"""Loading the pipio components from a ``LipSyncPipeline.save_pretrained`` folder (or stock diffusers /
transformers saves of the same networks) through the strict loader, ``lipsync.model.loading``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import AutoencoderKLLTXVideo
from transformers import T5Config, T5EncoderModel, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from lipsync.model.loading import LazyCheckpoint, LoadReport, build_and_load

from .config import LipSyncConfig
from .transformer_lipsync import LipSyncTransformer3DModel


def _read_component_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}")
    return json.loads(path.read_text())


def load_transformer(directory: Path, *, overrides: dict | None = None, allow_new_lipsync_modules: bool = False,
                     device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                     ) -> tuple[LipSyncTransformer3DModel, LoadReport]:
    """Our transformer from ``directory`` (ours, or a stock ``LTXVideoTransformer3DModel`` save)."""
    config = {k: v for k, v in _read_component_config(directory).items() if not k.startswith("_")}
    config.update(overrides or {})
    LipSyncConfig.validate_section("transformer", config, str(directory))
    allow = LipSyncTransformer3DModel.new_module_prefixes() if allow_new_lipsync_modules else ()
    return build_and_load(lambda: LipSyncTransformer3DModel(**config), LazyCheckpoint(directory),
                          component="transformer", source=str(directory), allow_new=allow, device=device, dtype=dtype)


def load_vae(directory: Path, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
             ) -> tuple[AutoencoderKLLTXVideo, LoadReport]:
    config = {k: v for k, v in _read_component_config(directory).items() if not k.startswith("_")}
    LipSyncConfig.validate_section("vae", config, str(directory))
    return build_and_load(lambda: AutoencoderKLLTXVideo(**config), LazyCheckpoint(directory), component="vae",
                          source=str(directory), device=device, dtype=dtype)


def _strip(prefixes: tuple[str, ...], ignore: tuple[str, ...]) -> Callable[[str], str | None]:
    def rename(key: str) -> str | None:
        if key.startswith(ignore):
            return None
        for prefix in prefixes:
            if key.startswith(prefix):
                return key[len(prefix):]
        return key
    return rename


def load_audio_encoder(directory: Path, *, device: str | torch.device | None = None,
                       dtype: torch.dtype | None = None) -> tuple[WhisperEncoder, LoadReport]:
    """Whisper encoder; a full ``WhisperModel`` / ``WhisperForConditionalGeneration`` checkpoint works too
    (``model.encoder.`` / ``encoder.`` prefixes are stripped and decoder weights are ignored, listed as such)."""
    config = WhisperConfig.from_pretrained(str(directory), local_files_only=True)
    rename = _strip(("model.encoder.", "encoder."), ("model.decoder.", "decoder.", "proj_out."))
    return build_and_load(lambda: WhisperEncoder(config).eval(), LazyCheckpoint(directory, rename),
                          component="audio_encoder", source=str(directory), device=device, dtype=dtype)


def load_text_encoder(directory: Path, *, device: str | torch.device | None = None,
                      dtype: torch.dtype | None = None) -> tuple[T5EncoderModel, LoadReport]:
    """T5 encoder; decoder and LM-head weights of a full T5 checkpoint are ignored (listed as such)."""
    config = T5Config.from_pretrained(str(directory), local_files_only=True)
    rename = _strip((), ("decoder.", "lm_head."))
    return build_and_load(lambda: T5EncoderModel(config).eval(), LazyCheckpoint(directory, rename),
                          component="text_encoder", source=str(directory), device=device, dtype=dtype)
