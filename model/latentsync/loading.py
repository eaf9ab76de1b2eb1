"""Loading LatentSync's published files: ``latentsync_unet.pt`` (strict), ``whisper/tiny.pt`` (OpenAI format, via
``model.latentsync.audio``), the sd-vae-ft-mse folder (diffusers ``AutoencoderKL``)."""

from __future__ import annotations

from pathlib import Path

import torch

from model.latentsync.config import UNetConfig

UNET_FILE = "latentsync_unet.pt"
WHISPER_FILE = "whisper/tiny.pt"
VAE_DIR = "sd-vae"


class CheckpointError(RuntimeError):
    """A published file does not hold what the configuration expects (named keys, shapes)."""


def read_unet_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], int | None]:
    """The state dict and global step of ``latentsync_unet.pt`` (``{global_step, state_dict}``), tensors only."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        return ckpt["state_dict"], ckpt.get("global_step")
    keys = f" with keys {sorted(ckpt)[:5]}" if isinstance(ckpt, dict) else ""
    raise CheckpointError(f"{path}: expected a dict with 'state_dict' (and 'global_step'), got "
                          f"{type(ckpt).__name__}{keys}")


def check_keys(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError naming missing / unexpected keys and shape mismatches (before loading anything)."""
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(want[k].shape)}" for k in want
              if k in state and tuple(state[k].shape) != tuple(want[k].shape)]
    if missing or unexpected or shapes:
        def show(items):
            return ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")
        parts = [f"{len(missing)} missing: {show(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected: {show(unexpected)}" if unexpected else "",
                 f"{len(shapes)} wrong shape: {show(shapes)}" if shapes else ""]
        raise CheckpointError(f"{source} does not match the UNet configuration: " + "; ".join(p for p in parts if p))


def load_unet(path: Path, config: UNetConfig, *, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Build the UNet on the meta device and load the checkpoint into it strictly."""
    from model.latentsync.unet import LatentSyncUNet

    state, step = read_unet_checkpoint(path)
    with torch.device("meta"):
        unet = LatentSyncUNet(config)
    check_keys(unet, state, str(path))
    unet.load_state_dict(state, strict=True, assign=True)
    unet.global_step = step
    return unet.to(device=device, dtype=dtype).eval()


def load_vae(folder: Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder, torch_dtype=dtype)
    return vae.to(device).eval()
