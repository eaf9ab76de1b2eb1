"""Devices and dtypes: the one map from the settings' dtype names to torch dtypes, and the ``auto`` rules."""

from __future__ import annotations

import torch

from lipsync.contract.settings import DType

TORCH_DTYPES: dict[str, torch.dtype] = {DType.FP32: torch.float32, DType.FP16: torch.float16, DType.BF16: torch.bfloat16}
"""Keys are ``DType`` members, which equal (and hash as) their names: ``TORCH_DTYPES["bf16"]`` works too."""


def cast_module(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``module.to(dtype)``, except that in fp16 the submodules its class keeps in fp32 stay there
    (transformers' ``_keep_in_fp32_modules``: T5's ``wo`` overflows fp16's range, as transformers' own loading
    knows). bf16 has fp32's range and casts everything. (``nn.Module.to`` itself: diffusers' override warns about
    fp32 modules on every dtype cast, even when a model has none.)"""
    torch.nn.Module.to(module, dtype=dtype)
    keep = getattr(module, "_keep_in_fp32_modules", None) or ()
    if dtype == torch.float16 and keep:
        for name, sub in module.named_modules():
            if any(part in keep for part in name.split(".")):
                torch.nn.Module.to(sub, dtype=torch.float32)
    return module


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
