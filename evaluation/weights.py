"""Strict loading of published checkpoints: every missing, unexpected or mis-shaped key is named."""

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


def _listing(keys: Collection[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_strict(
    model: nn.Module,
    state: Mapping[str, object],
    source: str,
    *,
    may_be_missing: Collection[str] = (),
) -> None:
    """Load ``state`` into ``model``; raise WeightsError naming every missing, unexpected or mis-shaped key.

    ``may_be_missing``: key suffixes tolerated when absent (e.g. BatchNorm's ``num_batches_tracked``, which
    checkpoints older than PyTorch 0.4.1 do not have and evaluation never reads).
    """
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{source}: expected a state dict of tensors, got {type(state).__name__}")
    own = model.state_dict()
    missing = [k for k in own if k not in state and not any(k.endswith(s) for s in may_be_missing)]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if shapes:
        problems.append(f"mis-shaped keys: {_listing(shapes)}")
    if problems:
        raise WeightsError(f"{source}: " + "; ".join(problems))
    merged = {**own, **{k: v for k, v in state.items()}}
    model.load_state_dict(merged, strict=True)
