"""Random weights in exactly the published file layouts, for the loaders and the CLI tests."""

from __future__ import annotations

from pathlib import Path

import torch

from lipsync.evaluation.stable_syncnet import StableSyncNet, StableSyncNetConfig
from lipsync.evaluation.syncnet_v2 import SyncNetV2

# A StableSyncNet small enough for CPU tests, written as a LatentSync YAML (same keys as the published one).
TINY_STABLE_YAML = """\
model:
  audio_encoder: # input (1, 80, 13): ceil(4 frames / 5 * 16) mel frames
    in_channels: 1
    block_out_channels: [32, 32, 64]
    downsample_factors: [[2, 1], [4, 4], [10, 13]]
    attn_blocks: [0, 1, 0]
    dropout: 0.0
  visual_encoder: # input (12, 32, 64)
    in_channels: 12
    block_out_channels: [32, 32, 64]
    downsample_factors: [[1, 2], 4, [8, 8]]
    attn_blocks: [0, 1, 0]
    dropout: 0.0
ckpt:
  inference_ckpt_path: checkpoints/stable_syncnet.pt
data:
  num_frames: 4
  resolution: 64
  lower_half: true
  latent_space: false
"""


def randomise(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The model's state dict with every float tensor random (running variances kept positive)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if not value.is_floating_point():
            state[key] = value.clone()
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(value.shape, generator=gen) * (0.05 if value.ndim > 1 else 0.1)
    return state


def write_syncnet_v2(path: Path, *, seed: int = 0, with_num_batches_tracked: bool = False) -> Path:
    """``syncnet_v2.model``: a bare state dict in PyTorch's legacy (pre-zip) serialisation."""
    state = randomise(SyncNetV2(), seed)
    if not with_num_batches_tracked:
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(state, path, _use_new_zipfile_serialization=False)
    return path


def write_stable_syncnet(path: Path, config_path: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """``stable_syncnet.pt`` as LatentSync's trainer saves it, and its YAML config."""
    config_path.write_text(TINY_STABLE_YAML)
    model = StableSyncNet(StableSyncNetConfig.from_yaml(config_path))
    torch.save({"state_dict": randomise(model, seed), "global_step": 2500}, path)
    return path, config_path
