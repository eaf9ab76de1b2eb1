"""Devices and dtypes: the one map from the settings' dtype names to torch dtypes, and the ``auto`` rules."""

from __future__ import annotations

import torch

from lipsync.contract.settings import DType

TORCH_DTYPES: dict[str, torch.dtype] = {DType.FP32: torch.float32, DType.FP16: torch.float16, DType.BF16: torch.bfloat16}
"""Keys are ``DType`` members, which equal (and hash as) their names: ``TORCH_DTYPES["bf16"]`` works too."""


def torch_dtype(name: str) -> torch.dtype:
    """``"bf16"`` / ``DType.BF16`` (or an alias such as ``"bfloat16"``) → ``torch.bfloat16``; ``auto`` is not a dtype."""
    return TORCH_DTYPES[DType(name)]


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when a CUDA device is visible, else ``cpu``; anything else as given."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def resolve_dtype(name: str, device: str) -> str:
    """The dtype name a model runs in: ``auto`` is bf16 on CUDA, fp32 elsewhere; aliases become short names."""
    dtype = DType(name)
    if dtype is DType.AUTO:
        return DType.BF16.value if device.startswith("cuda") else DType.FP32.value
    return dtype.value
