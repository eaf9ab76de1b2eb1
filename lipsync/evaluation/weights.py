"""Reading the published evaluation checkpoints (tensors only) and loading them strictly, through the same
loader as the engines (``lipsync.model.loading``): every missing, unexpected or mis-shaped key is named."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import torch
from torch import nn


class WeightsError(ValueError):
    """A weights file that does not hold what its loader expects; the message names the file and keys."""


def read_checkpoint(path: str | Path) -> object:
    """``torch.load`` of a tensors-only file (``weights_only``: no code runs), on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickled module, a truncated or foreign file
        raise WeightsError(f"{path}: not a tensors-only PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc


def load_strict(
    model: nn.Module,
    state: Mapping[str, object],
    source: str,
    *,
    may_be_missing: Collection[str] = (),
) -> None:
    """Load ``state`` into ``model`` with the engines' strict loader (``lipsync.model.loading.load_weights``, which
    raises ``WeightsLoadError`` naming every missing, unexpected or mis-shaped key).

    ``may_be_missing``: key fragments tolerated when absent (e.g. BatchNorm's ``num_batches_tracked``, which
    checkpoints older than PyTorch 0.4.1 do not have and evaluation never reads).
    """
    from lipsync.model.loading import load_weights

    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{source}: expected a state dict of tensors, got {type(state).__name__}")
    load_weights(model, state, component=type(model).__name__, source=source, allow_new=may_be_missing)
