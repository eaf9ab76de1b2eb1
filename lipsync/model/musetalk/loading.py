"""Strict loading of MuseTalk's three networks from the published folder, as stock library classes.

- UNet: diffusers ``UNet2DConditionModel`` built from ``musetalk.json``; weights a plain torch state dict
  (``unet.pth`` / ``pytorch_model.bin``) read with ``torch.load(weights_only=True)``;
- VAE: diffusers ``AutoencoderKL`` from ``sd-vae/config.json`` and its ``.bin`` or ``.safetensors``; the
  hub's sd-vae-ft-mse file predates diffusers' attention renaming (``query`` / ``key`` / ``value`` /
  ``proj_attn``), so those names are mapped to today's (``to_q`` / ``to_k`` / ``to_v`` / ``to_out.0``) as
  diffusers' own loader does;
- audio: transformers ``WhisperEncoder`` from ``whisper/config.json`` (the encoder of ``WhisperModel``, all
  MuseTalk uses); the checkpoint's decoder and output projection are read and deliberately left out; the
  feature extractor from ``preprocessor_config.json``.

Every missing, unexpected or mis-shaped key raises ``WeightsLoadError`` naming all of them and the file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from lipsync.model.loading import WeightsLoadError, build_and_load

__all__ = ["MuseTalkNetworks", "WeightsLoadError", "load_networks", "read_checkpoint"]


@dataclass
class MuseTalkNetworks:
    unet: torch.nn.Module
    vae: torch.nn.Module
    audio_encoder: torch.nn.Module
    feature_extractor: object

    def to(self, device: str, dtype: torch.dtype) -> "MuseTalkNetworks":
        for net in (self.unet, self.vae, self.audio_encoder):
            net.to(device)
            if dtype != torch.float32:
                net.to(dtype)
            net.eval().requires_grad_(False)
        return self


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch pickle (tensors only: ``weights_only=True``)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a flat state dict of tensors (what torch.save(module.state_dict()) writes)")
    return state


def _first(root: Path, *names: str) -> Path:
    for name in names:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"none of {', '.join(names)} in {root}")


def load_unet(config_path: Path, weights_path: Path) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    config = json.loads(config_path.read_text())
    state = read_checkpoint(weights_path)
    unet, _ = build_and_load(lambda: UNet2DConditionModel.from_config(config), state, component="MuseTalk UNet",
                             source=str(weights_path))
    return unet


_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_OLD_ATTENTION_KEY = re.compile(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")


def _vae_key(key: str) -> str:
    m = _OLD_ATTENTION_KEY.match(key)
    return f"{m[1]}.{_OLD_ATTENTION[m[2]]}.{m[3]}" if m else key


def load_vae(folder: Path) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    config = json.loads((folder / "config.json").read_text())
    path = _first(folder, "diffusion_pytorch_model.bin", "diffusion_pytorch_model.safetensors")
    vae, _ = build_and_load(lambda: AutoencoderKL.from_config(config), read_checkpoint(path),
                            component="VAE (sd-vae)", source=str(path), rename=_vae_key)
    return vae


def _whisper_key(key: str) -> str | None:
    for prefix in ("model.encoder.", "encoder."):
        if key.startswith(prefix):
            return key[len(prefix):]
    if key.startswith(("model.decoder.", "decoder.", "proj_out.")):
        return None  # the text decoder: MuseTalk uses the encoder only
    return key


def load_audio_encoder(folder: Path) -> torch.nn.Module:
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = WhisperConfig.from_pretrained(folder)
    path = _first(folder, "pytorch_model.bin", "model.safetensors")
    encoder, _ = build_and_load(lambda: WhisperEncoder(config), read_checkpoint(path), component="whisper encoder",
                                source=str(path), rename=_whisper_key)
    return encoder


def load_networks(root: Path, unet_config: str, unet_weights: str) -> MuseTalkNetworks:
    from transformers import AutoFeatureExtractor

    return MuseTalkNetworks(
        unet=load_unet(root / unet_config, root / unet_weights),
        vae=load_vae(root / "sd-vae"),
        audio_encoder=load_audio_encoder(root / "whisper"),
        feature_extractor=AutoFeatureExtractor.from_pretrained(root / "whisper"),
    )
