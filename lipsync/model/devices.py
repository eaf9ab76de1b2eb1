"""The device policy every engine and script shares: dtype names and their ``auto`` rule, backend switches,
and how much of the accelerator one request may take (memory caps computed per request, out-of-memory
handled once at half the batch, then a typed error)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from lipsync.contract.errors import DeviceOutOfMemory
from lipsync.contract.settings import DType

log = logging.getLogger(__name__)
T = TypeVar("T")

MEMORY_HEADROOM = 0.8
"""Share of the device's free memory, at the start of a request, that its batches may take (the allocator's
fragmentation and the model's own transients take the rest)."""

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


def resolve_dtype(name: str, device: str, prefer: str = DType.BF16) -> str:
    """The dtype name a model runs in; aliases become short names. ``auto``: on CUDA the engine's own
    preference (what its authors' inference uses), but fp16 where the GPU has no bf16 (compute capability < 8:
    T4, V100); fp32 elsewhere (a CPU has no fast half precision)."""
    dtype = DType(name)
    if dtype is not DType.AUTO:
        return dtype.value
    if not device.startswith("cuda"):
        return DType.FP32.value
    if DType(prefer) is DType.BF16 and not torch.cuda.is_bf16_supported(including_emulation=False):
        return DType.FP16.value
    return DType(prefer).value


def configure_backends(device: str, *, repeated_shapes: bool) -> None:
    """TF32 for fp32 matmuls and convolutions on CUDA (Ampere and later: ~8x the fp32 rate, 10-bit mantissa,
    what the fp32 parts of a half-precision model can afford); cuDNN autotuning where an engine's shapes repeat
    from batch to batch (autotuning a shape seen once costs more than it gains)."""
    if not device.startswith("cuda"):
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = repeated_shapes


# ---------------------------------------------------------------------------------------------------- memory
@dataclass(frozen=True)
class BatchFit:
    """A batch size as asked (by a request knob) and as it fits the device's memory now."""

    size: int
    asked: int
    why: str = ""
    """Said when the cap binds: the request's log and metrics carry it."""

    @property
    def bound(self) -> bool:
        return self.size < self.asked


def fit_batch(asked: int, bytes_per_item: float, device: str, *, what: str, reserve_bytes: float = 0.0,
              limit: int | None = None, limit_why: str = "") -> BatchFit:
    """As many of ``asked`` items as fit in ``MEMORY_HEADROOM`` of the device's free memory at this moment (so
    two workers on one GPU, or a longer request before, are seen as they are) less ``reserve_bytes`` (what
    runs inside each batch), and at most ``limit``."""
    asked = max(1, asked)
    size, reasons = asked, []
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        budget = MEMORY_HEADROOM * free - reserve_bytes
        fits = max(1, int(budget // max(bytes_per_item, 1.0)))
        if fits < size:
            size = fits
            reasons.append(f"{fits} fit in {MEMORY_HEADROOM:.0%} of {free / 2**30:.1f} GiB free "
                           f"(~{bytes_per_item / 2**20:,.0f} MiB each)")
    if limit is not None and limit < size:
        size = max(1, limit)
        reasons.append(limit_why or f"at most {limit}")
    why = f"{what}: {asked} asked, {size} used: " + "; ".join(reasons) if size < asked else ""
    if why:
        log.info(why)
    return BatchFit(size, asked, why)


def bytes_per_item(run: Callable[[int], object], device: str) -> float:
    """Device memory one more item of ``run(n)`` costs, measured: the peak of ``run(2)`` less that of ``run(1)``
    (at least half of ``run(1)``'s, for stages whose first item pays a fixed share). On a CPU: 0."""
    if not device.startswith("cuda"):
        return 0.0
    dev = torch.device(device)
    peaks = []
    for n in (1, 2):
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        run(n)
        torch.cuda.synchronize(dev)
        peaks.append(torch.cuda.max_memory_allocated(dev) - base)
    torch.cuda.empty_cache()
    return float(max(peaks[1] - peaks[0], peaks[0] / 2, 1))


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower() and \
        isinstance(exc, RuntimeError)


def typed_out_of_memory(items: Iterator[T], *, what: str) -> Iterator[T]:
    """``items`` (an engine's generated chunks), with a device out-of-memory error anywhere in them turned into
    ``DeviceOutOfMemory`` once the cache is emptied: the request ends typed, the next one finds the memory."""
    try:
        yield from items
        return
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        detail = str(exc).splitlines()[0][:200]
    torch.cuda.empty_cache()
    raise DeviceOutOfMemory(f"{what}: out of device memory ({detail})")


def in_halves_on_oom(run: Callable[[Sequence], list[T]], items: Sequence, *, what: str,
                     say: Callable[[str], None]) -> list[T]:
    """``run(items)``; when the device runs out of memory, its cache is emptied and the items run once more in
    two halves, in order; a second out-of-memory ends the request with ``DeviceOutOfMemory``."""
    try:
        return run(items)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        detail = str(exc).splitlines()[0][:200]
    torch.cuda.empty_cache()
    if len(items) < 2:
        raise DeviceOutOfMemory(f"{what}: out of device memory for a single item ({detail})")
    half = len(items) // 2
    say(f"{what}: out of device memory for {len(items)} at once; retrying as {half} + {len(items) - half}")
    try:
        return run(items[:half]) + run(items[half:])
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        torch.cuda.empty_cache()
        raise DeviceOutOfMemory(f"{what}: out of device memory even at half the batch ({half})") from None
