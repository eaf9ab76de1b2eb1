"""The SyncNet of ``syncnet_v2.model`` (Chung & Zisserman, "Out of time", ACCV 2016 workshop), as published
in joonson/syncnet_python (``SyncNetModel.S``): the same layers under the same state-dict names, our code.

Inputs (the published evaluation's): video windows (N, 3, 5, 224, 224) — five 25 fps face crops, BGR, pixel
values 0-255 unnormalised; audio windows (N, 1, 13, 20) — 20 MFCC frames (0.2 s) of 13 coefficients.
Both branches give (N, 1024) embeddings compared by Euclidean distance (no normalisation).

The published file is a plain state dict (``syncnet_python``'s ``loadParameters`` iterates ``.items()``),
saved in PyTorch's legacy (pre-zip) format. ``load_syncnet_v2`` loads it strictly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lipsync.evaluation.weights import WeightsError, load_strict, read_checkpoint

CROP_SIZE = 224
WINDOW_FRAMES = 5
MFCC_PER_WINDOW = 20
EMBED_DIM = 1024


def _conv2d_bn(cin: int, cout: int, kernel=(3, 3), padding=(1, 1), inplace: bool = True) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel_size=kernel, stride=(1, 1), padding=padding), nn.BatchNorm2d(cout), nn.ReLU(inplace)]


def _conv3d_bn(cin: int, cout: int, kernel, stride=(1, 1, 1), padding=0) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, kernel_size=kernel, stride=stride, padding=padding), nn.BatchNorm3d(cout), nn.ReLU(True)]


def _head(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, dim))


class SyncNetV2(nn.Module):
    """Audio branch ``netcnnaud`` + ``netfcaud``, lip branch ``netcnnlip`` + ``netfclip``.

    The module indices inside each ``nn.Sequential`` are the published ones (pools and ReLUs count), so the
    state-dict keys (``netcnnaud.0.weight`` …) are the checkpoint's.
    """

    crop_size = CROP_SIZE

    def __init__(self, embed_dim: int = EMBED_DIM):
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_conv2d_bn(1, 64), nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),
            *_conv2d_bn(64, 192), nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),
            *_conv2d_bn(192, 384),
            *_conv2d_bn(384, 256),
            *_conv2d_bn(256, 256), nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),
            *_conv2d_bn(256, 512, kernel=(5, 4), padding=(0, 0), inplace=False),
        )  # (N, 1, 13, 20) -> (N, 512, 1, 1)
        self.netfcaud = _head(embed_dim)
        self.netcnnlip = nn.Sequential(
            *_conv3d_bn(3, 96, (5, 7, 7), stride=(1, 2, 2)), nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),
            *_conv3d_bn(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            *_conv3d_bn(256, 256, (1, 3, 3), padding=(0, 1, 1)),
            *_conv3d_bn(256, 256, (1, 3, 3), padding=(0, 1, 1)),
            *_conv3d_bn(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),
            *_conv3d_bn(256, 512, (1, 6, 6)),
        )  # (N, 3, 5, 224, 224) -> (N, 512, 1, 1, 1)
        self.netfclip = _head(embed_dim)

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(N, 1, 13, 20) MFCC windows -> (N, embed_dim)."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, 5, 224, 224) BGR 0-255 windows -> (N, embed_dim)."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))


def load_syncnet_v2(path: str | Path) -> SyncNetV2:
    """``syncnet_v2.model`` (a state dict) -> SyncNetV2 in eval mode, strictly: every parameter and BatchNorm
    running statistic must be in the file with the published shape, and nothing else may be. Only
    ``num_batches_tracked`` may be absent (checkpoints older than PyTorch 0.4.1 lack it; eval never reads it)."""
    state = read_checkpoint(path)
    if isinstance(state, nn.Module):  # pragma: no cover - weights_only never yields a module
        raise WeightsError(f"{path}: a pickled module, not the published state dict")
    model = SyncNetV2()
    load_strict(model, state, str(path), may_be_missing=("num_batches_tracked",))
    return model.eval()
