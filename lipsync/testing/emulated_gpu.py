"""Run GPU code paths without a GPU: a fake CUDA device, and the ``meta`` device, each with a memory ledger.

``emulated_cuda()`` runs its block under torch's ``FakeTensorMode``: tensors made on ``cuda`` have a device,
shape and dtype but no data, every op checks devices as CUDA does (a non-scalar CPU tensor mixed with a CUDA
one raises), and ``torch.cuda`` answers as one GPU would (``is_available``, ``mem_get_info`` from the ledger
and the free memory given, capability, bf16 support). ``emulated_meta()`` does the same on the ``meta``
device, which refuses mixed devices natively.

Data that never exists needs a few stand-ins, all at the host/device boundary:
- host → device (``.to``, ``.cuda``, ``copy_``, loading a checkpoint into a module): a device tensor of the
  same shape and dtype; checkpoints are read from disk for real (``torch.load``, safetensors), as the loader
  would, and only their shapes cross;
- device → host (``.cpu()``, ``.numpy()`` after it): zeros of the right shape and dtype;
- ops whose fake kernels need the CUDA library (``copy_``, ``index_put_``, fused attention, CUDA generators):
  shape-checked stand-ins (attention's output is ``(..., L, Ev)``, as flash attention allocates).

The ledger counts the bytes of every live device storage and keeps the peak, so memory caps can be checked
against a given card size; past the card's free memory an allocation raises CUDA's out-of-memory error. Nothing here is for production: tests and ``scripts/gpu_check.py --emulate``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import safetensors
import safetensors.torch
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

GiB = 1 << 30
aten = torch.ops.aten


@dataclass
class DeviceLedger:
    """Live and peak bytes of the emulated device's storages."""

    device_type: str
    total_bytes: int = 80 * GiB
    free_at_start: int = 80 * GiB
    """What ``torch.cuda.mem_get_info`` reports free before anything is allocated (another process may hold
    the rest)."""
    capability: tuple[int, int] = (9, 0)
    limit_bytes: int | None = None
    """Allocations past this many live bytes raise CUDA's out-of-memory error (None: ``free_at_start``). A test
    may lower it mid-request: another process taking memory after a request sized its batches."""
    peak_bytes: int = 0
    _live: WeakIdKeyDictionary = field(default_factory=WeakIdKeyDictionary)

    @property
    def live_bytes(self) -> int:
        return sum(self._live.values())

    def track(self, out: object) -> None:
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.device.type == self.device_type:
                storage = t.untyped_storage()
                if storage not in self._live:
                    self._live[storage] = storage.nbytes()
                    live = self.live_bytes
                    limit = self.free_at_start if self.limit_bytes is None else self.limit_bytes
                    if self.device_type == "cuda" and live > limit:
                        del self._live[storage]
                        raise torch.OutOfMemoryError(
                            f"CUDA out of memory (emulated): {storage.nbytes() / 2**20:.1f} MiB more with "
                            f"{(live - storage.nbytes()) / 2**20:.1f} MiB live, {limit / 2**20:.1f} MiB available")
                    self.peak_bytes = max(self.peak_bytes, live)

    def reset_peak(self) -> None:
        self.peak_bytes = self.live_bytes

    def mem_get_info(self, device: object = None) -> tuple[int, int]:
        return max(0, self.free_at_start - self.live_bytes), self.total_bytes


class _Ledger(TorchDispatchMode):
    """Counts device storages; stands in for the ops whose fake kernels need the CUDA library."""

    def __init__(self, ledger: DeviceLedger):
        super().__init__()
        self.ledger = ledger

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device = self.ledger.device_type
        if not _on_device(device, args, kwargs):  # host work (schedulers, indices, masks) runs for real
            with unset_fake_temporarily():
                return func(*args, **kwargs)
        if func is aten._local_scalar_dense.default:  # a device value read by the host (``.item()``): zero
            return args[0].dtype.is_floating_point and 0.0 or (False if args[0].dtype == torch.bool else 0)
        if func in (aten.copy_.default, aten.index_put_.default, aten._index_put_impl_.default) and \
                args[0].device.type == device:
            dst = args[0]
            if func is aten.copy_.default:
                torch.broadcast_shapes(dst.shape, args[1].shape)  # what copy_ would check
            return dst  # no data to copy
        out = func(*args, **kwargs)
        self.ledger.track(out)
        return out


def _on_device(device_type: str, args: tuple, kwargs: dict) -> bool:
    for leaf in tree_leaves((args, kwargs)):
        if isinstance(leaf, torch.Tensor) and (leaf.device.type == device_type or isinstance(leaf, FakeTensor)):
            return True
        if isinstance(leaf, torch.device) and leaf.type == device_type:
            return True
    return False


_PASS = object()
"""``_boundary`` found nothing to stand in for: the real function runs."""


def _boundary(name: str, original, device_type: str, args: tuple, kwargs: dict) -> object:
    """Stand-ins at the host/device boundary, for a patched function ``name``; ``_PASS`` when not needed."""
    first = args[0] if args else None
    on_device = isinstance(first, torch.Tensor) and first.device.type == device_type
    if name in ("to", "cuda", "cpu"):
        if name == "cuda":
            device, dtype = torch.device(device_type), None
        elif name == "cpu":
            device, dtype = torch.device("cpu"), None
        elif len(args) > 1 and isinstance(args[1], torch.Tensor):
            device, dtype = args[1].device, args[1].dtype
        else:
            device, dtype, _, _ = torch._C._nn._parse_to(*args[1:], **kwargs)
        if device is not None and device.type == "cuda":
            device = torch.device(device_type)
        if device is not None and device.type != first.device.type:
            dtype = dtype or first.dtype
            if device.type == device_type:  # host -> device: shape and dtype only
                return torch.empty(first.shape, dtype=dtype, device=device)
            with unset_fake_temporarily():  # device -> host: zeros
                return torch.zeros(first.shape, dtype=dtype)
        if device is not None and on_device:  # naming the device it is already on
            return first if dtype in (None, first.dtype) else original(first, dtype=dtype)
        return _PASS
    if name in ("tensor", "as_tensor", "new_tensor"):
        # no device given: a ``with torch.device("cuda")`` block's (models are built in one)
        device = kwargs.get("device") or (None if name == "new_tensor" else _context_device())
        if device is None or torch.device(device).type not in ("cuda", device_type):
            return _PASS
        data = args[1] if name == "new_tensor" else args[0]
        dtype = kwargs.get("dtype") or (first.dtype if name == "new_tensor" else None)
        with unset_fake_temporarily():
            host = torch.as_tensor(data.cpu() if isinstance(data, torch.Tensor) else data, dtype=dtype, device="cpu")
        return torch.empty(host.shape, dtype=host.dtype, device=device_type)
    if name == "scaled_dot_product_attention":
        return _attention(device_type, args, kwargs)
    if name == "pin_memory":
        return first
    if not on_device:
        return _PASS
    if name in _HOST_READS:  # a device value read by the host: zeros
        with unset_fake_temporarily():
            return original(torch.zeros(first.shape, dtype=first.dtype), *args[1:], **kwargs)
    if name == "contiguous":
        fmt = kwargs.get("memory_format", args[1] if len(args) > 1 else torch.contiguous_format)
        return first if first.is_contiguous(memory_format=fmt) else aten.clone.default(first, memory_format=fmt)
    if name in ("uniform_", "record_stream"):
        return first
    if name == "__getitem__":
        return _getitem(first, args[1])
    if name == "copy_":  # no data to copy: what copy_ checks, then the destination as it is
        torch.broadcast_shapes(first.shape, args[1].shape)
        return first
    if name == "__setitem__":
        return None
    return _PASS


def _context_device() -> torch.device | None:
    """The device of an enclosing ``with torch.device(...)`` block (a function mode on torch's stack), if any."""
    from torch.overrides import _get_current_function_mode_stack
    from torch.utils._device import DeviceContext

    modes = [m for m in _get_current_function_mode_stack() if isinstance(m, DeviceContext)]
    return modes[-1].device if modes else None


def _attention(device_type: str, args: tuple, kwargs: dict) -> object:
    """Fused attention's checks and its output, ``(..., L, Ev)`` (the fake kernels need the CUDA library)."""
    given = {**dict(zip(("query", "key", "value", "attn_mask"), args)), **kwargs}
    query, key, value = given["query"], given["key"], given["value"]
    if query.device.type != device_type:
        return _PASS
    if not (query.device == key.device == value.device):
        raise RuntimeError(f"attention inputs on {query.device}, {key.device}, {value.device}")
    if not (query.dtype == key.dtype == value.dtype):
        raise RuntimeError(f"attention inputs in {query.dtype}, {key.dtype}, {value.dtype}")
    mask = given.get("attn_mask")
    if isinstance(mask, torch.Tensor) and mask.device != query.device:
        raise RuntimeError(f"attention mask on {mask.device}, queries on {query.device}")
    if not given.get("enable_gqa"):
        torch.broadcast_shapes(query.shape[:-2], key.shape[:-2])
    return torch.empty((*query.shape[:-1], value.shape[-1]), dtype=query.dtype, device=query.device)


_HOST_READS = ("item", "tolist", "__int__", "__float__", "__bool__", "__index__")
"""What CUDA lets the host read off a device tensor (a sync); ``.numpy()`` it refuses, and so does the emulation."""
_TENSOR_METHODS = ("to", "cuda", "cpu", "new_tensor", "pin_memory", "contiguous", "uniform_", "record_stream",
                   "__getitem__", "__setitem__", "copy_", *_HOST_READS)


def _boundary_patches(device_type: str) -> list[tuple[object, str, object]]:
    """Every function the boundary answers, patched where callers look it up (decompositions included)."""
    def wrap(owner: object, name: str):
        original = getattr(owner, name)

        def patched(*args, **kwargs):
            out = _boundary(name, original, device_type, args, kwargs)
            return original(*args, **kwargs) if out is _PASS else out
        return owner, name, patched

    return [*(wrap(torch.Tensor, name) for name in _TENSOR_METHODS), wrap(torch, "tensor"), wrap(torch, "as_tensor"),
            wrap(torch.nn.functional, "scaled_dot_product_attention")]


def _getitem(tensor: torch.Tensor, index: object) -> torch.Tensor:
    """``tensor[index]`` through aten ops (Python indexing of a fake CUDA tensor needs the CUDA library)."""
    items = list(index) if isinstance(index, tuple) else [index]
    consuming = sum(1 for i in items if i is not None and i is not Ellipsis)
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items[at:at + 1] = [slice(None)] * (tensor.dim() - consuming)
    out, dim, advanced = tensor, 0, {}
    for item in items:
        if item is None:
            out = aten.unsqueeze.default(out, dim)
            dim += 1
        elif isinstance(item, bool):
            raise NotImplementedError("indexing with a Python bool")
        elif isinstance(item, int) or (isinstance(item, torch.Tensor) and item.dim() == 0 and not item.is_floating_point()
                                       and item.dtype != torch.bool and item.device.type == "cpu"):
            out = aten.select.int(out, dim, int(item))
        elif isinstance(item, slice):
            out = aten.slice.Tensor(out, dim, item.start, item.stop, item.step or 1)
            dim += 1
        else:  # advanced: an index tensor or a list, applied after the basic ones
            advanced[dim] = item if isinstance(item, torch.Tensor) else torch.tensor(item)
            dim += 1
    if advanced:
        positions = sorted(advanced)
        if positions != list(range(positions[0], positions[-1] + 1)):
            raise NotImplementedError("advanced indices separated by a slice")
        out = aten.index.Tensor(out, [advanced.get(d) for d in range(positions[-1] + 1)])
    return out


def _on_host(fn):
    """``fn`` with real tensors (checkpoint reads): what it returns crosses to the device later, by shape."""
    def wrapper(*args, **kwargs):
        with unset_fake_temporarily():
            return fn(*args, **kwargs)
    return wrapper


class _HostFile:
    """A safetensors handle whose reads give real host tensors."""

    def __init__(self, handle):
        self._handle = handle

    def __enter__(self) -> "_HostFile":
        self._handle.__enter__()
        return self

    def __exit__(self, *exc: object) -> object:
        return self._handle.__exit__(*exc)

    def __getattr__(self, name: str):
        attr = getattr(self._handle, name)
        return _on_host(attr) if callable(attr) else attr


def _apply_assigning(self: torch.nn.Module, fn, recurse: bool = True) -> torch.nn.Module:
    """``Module._apply`` assigning the converted tensors (fake parameters cannot be swapped in place)."""
    for module in self.modules() if recurse else (self,):
        for name, param in module._parameters.items():
            if param is not None:
                with torch.no_grad():
                    module._parameters[name] = torch.nn.Parameter(fn(param), requires_grad=param.requires_grad)
        for name, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[name] = fn(buffer)
    return self


class _Generator:
    """``torch.Generator(device="cuda")`` without the CUDA library: a CPU generator (draws are shapes only)."""

    def __new__(cls, device: object = "cpu"):
        return _REAL_GENERATOR("cpu")


_REAL_GENERATOR = torch.Generator


@contextlib.contextmanager
def _patched(patches: list[tuple[object, str, object]]) -> Iterator[None]:
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


def _host_patches() -> list[tuple[object, str, object]]:
    import lipsync.model.loading as loading

    real_open = safetensors.safe_open

    def safe_open(*args, **kwargs):
        with unset_fake_temporarily():
            return _HostFile(real_open(*args, **kwargs))

    return [(torch.nn.Module, "_apply", _apply_assigning), (torch, "load", _on_host(torch.load)),
            (safetensors, "safe_open", safe_open), (loading, "safe_open", safe_open),
            (safetensors.torch, "load_file", _on_host(safetensors.torch.load_file)), (torch, "Generator", _Generator)]


@contextlib.contextmanager
def emulated_cuda(*, free_bytes: int = 80 * GiB, total_bytes: int = 80 * GiB,
                  capability: tuple[int, int] = (9, 0)) -> Iterator[DeviceLedger]:
    """A fake CUDA device for the block: ``free_bytes`` free at start, ``capability`` (9, 0) = an H100."""
    ledger = DeviceLedger("cuda", total_bytes=total_bytes, free_at_start=free_bytes, capability=capability)
    cuda = torch.cuda
    patches = [*_host_patches(), (cuda, "is_available", lambda: True), (cuda, "device_count", lambda: 1),
               (cuda, "current_device", lambda: 0), (cuda, "mem_get_info", ledger.mem_get_info),
               (cuda, "get_device_capability", lambda device=None: capability),
               (cuda, "is_bf16_supported", lambda including_emulation=True: capability >= (8, 0)),
               (cuda, "get_device_name", lambda device=None: f"emulated GPU (sm_{capability[0]}{capability[1]})"),
               (cuda, "empty_cache", lambda: None), (cuda, "synchronize", lambda device=None: None),
               (cuda, "max_memory_allocated", lambda device=None: ledger.peak_bytes),
               (cuda, "memory_allocated", lambda device=None: ledger.live_bytes),
               (cuda, "reset_peak_memory_stats", lambda device=None: ledger.reset_peak())]
    with warnings.catch_warnings(), _patched([*patches, *_boundary_patches("cuda")]):
        warnings.filterwarnings("ignore", message=".*data pointer of FakeTensor.*")
        with FakeTensorMode(allow_non_fake_inputs=True), _Ledger(ledger):
            yield ledger


@contextlib.contextmanager
def emulated_meta() -> Iterator[DeviceLedger]:
    """The ``meta`` device as the accelerator: engines loaded with ``device="meta"`` run every op for its
    shapes and device checks only; ``.cpu()`` gives zeros."""
    ledger = DeviceLedger("meta")
    # meta tensors are ordinary tensors: only generators and the host/device boundary need stand-ins
    with _patched([(torch, "Generator", _Generator), *_boundary_patches("meta")]), _Ledger(ledger):
        yield ledger
