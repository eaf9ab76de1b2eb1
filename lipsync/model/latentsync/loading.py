"""Loading LatentSync's published files: ``latentsync_unet.pt`` (strictly, ``lipsync.model.loading``), ``whisper/tiny.pt`` (OpenAI format, via
``lipsync.model.latentsync.audio``), the sd-vae-ft-mse folder (diffusers ``AutoencoderKL``)."""

from __future__ import annotations

from pathlib import Path

import torch

from lipsync.model.latentsync.config import UNetConfig
from lipsync.model.loading import load_weights

UNET_FILE = "latentsync_unet.pt"
WHISPER_FILE = "whisper/tiny.pt"
VAE_DIR = "sd-vae"


class CheckpointError(RuntimeError):
    """``latentsync_unet.pt`` is not the published ``{global_step, state_dict}`` pickle (key mismatches raise
    ``lipsync.model.loading.WeightsLoadError``)."""


def read_unet_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], int | None]:
    """The state dict and global step of ``latentsync_unet.pt`` (``{global_step, state_dict}``), tensors only."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        return ckpt["state_dict"], ckpt.get("global_step")
    keys = f" with keys {sorted(ckpt)[:5]}" if isinstance(ckpt, dict) else ""
    raise CheckpointError(f"{path}: expected a dict with 'state_dict' (and 'global_step'), got "
                          f"{type(ckpt).__name__}{keys}")


def load_unet(path: Path, config: UNetConfig, *, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Build the UNet on the meta device and load the checkpoint into it strictly."""
    from lipsync.model.latentsync.unet import LatentSyncUNet

    state, step = read_unet_checkpoint(path)
    with torch.device("meta"):
        unet = LatentSyncUNet(config)
    load_weights(unet, state, component="LatentSync UNet", source=str(path), device=device, dtype=dtype)
    unet.global_step = step
    return unet.eval()


def load_vae(folder: Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder, torch_dtype=dtype)
    return vae.to(device).eval()
