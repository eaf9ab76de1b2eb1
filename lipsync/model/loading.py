"""Strict weight loading for every engine and the evaluation networks, with errors that name keys.

``load_weights`` compares a checkpoint (safetensors, a ``torch.load`` state dict, a :class:`LazyCheckpoint`)
with a module and raises :class:`WeightsLoadError` naming the missing, unexpected and wrongly shaped keys
(all of them on the exception, the first ``SHOWN`` of each in the message), unless the missing keys are ones
the caller allows (pipio's lip-sync modules when starting from a stock LTX-Video checkpoint, BatchNorm
counters an old checkpoint lacks); those are reported back instead. Never ``strict=False`` on a mismatch.

Loading in the target dtype on the target device: a module built on ``meta`` is cast there (free), given
empty storage directly on ``device``, and filled tensor by tensor from a :class:`LazyCheckpoint` (keys and
shapes from the safetensors headers; the file is mapped for one batch of about 16 MB at a time, so neither an
fp32 copy nor the whole checkpoint is ever resident next to the model: peak host memory ~ the model in its
dtype when loading on the CPU, ~ one batch when loading onto a GPU).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lipsync.model.devices import cast_module

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors")


SHOWN = 20
"""Keys of each kind named in a WeightsLoadError's message (a wrong file can differ in thousands)."""


class WeightsLoadError(ValueError):
    """A checkpoint does not match the module: ``missing``, ``unexpected`` and ``mismatched`` hold every
    offending key; the message names the first ``SHOWN`` of each."""

    def __init__(self, component: str, source: str, missing: list[str], unexpected: list[str],
                 mismatched: list[str]):
        self.component, self.source = component, source
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched

        def listing(keys: list[str]) -> str:
            more = f" … and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
            return ", ".join(keys[:SHOWN]) + more

        parts = [f"cannot load {component} weights from {source}:"]
        if missing:
            parts.append(f"{len(missing)} missing key(s): {listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {listing(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es): {listing(mismatched)}")
        super().__init__("\n  ".join(parts))


@dataclass
class LoadReport:
    """What a load did: keys loaded, keys left at their fresh initialisation, checkpoint keys deliberately unused."""

    component: str
    loaded: list[str] = field(default_factory=list)
    newly_initialized: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def find_weights_file(directory: Path) -> Path:
    for name in WEIGHT_NAMES:
        if (directory / name).is_file() or (directory / f"{name}.index.json").is_file():
            return directory / name
    raise FileNotFoundError(f"no {' or '.join(WEIGHT_NAMES)} (or sharded index) in {directory}")


def shard_files(path: Path) -> list[Path]:
    """The safetensors file(s) of ``path``: one file, or the shards its ``*.index.json`` lists."""
    path = Path(path)
    if path.is_dir():
        path = find_weights_file(path)
    index = Path(f"{path}.index.json")
    if not path.is_file() and index.is_file():
        return [path.parent / shard for shard in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return [path]


class LazyCheckpoint(Mapping):
    """A safetensors checkpoint (file, folder or sharded index) read lazily: keys and shapes from the headers,
    tensors on access. ``rename`` maps checkpoint keys to module keys (None = ignore the key)."""

    BATCH_BYTES = 16 << 20

    def __init__(self, path: Path, rename: Callable[[str], str | None] | None = None):
        self._where: dict[str, tuple[Path, str]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._sizes: dict[str, int] = {}
        self.ignored: list[str] = []
        for file in shard_files(path):
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    name = rename(key) if rename is not None else key
                    if name is None:
                        self.ignored.append(key)
                        continue
                    info = handle.get_slice(key)
                    shape = tuple(info.get_shape())
                    self._where[name], self._shapes[name] = (file, key), shape
                    self._sizes[name] = _numel(shape) * _DTYPE_BYTES.get(info.get_dtype(), 4)

    def __getitem__(self, name: str) -> torch.Tensor:
        file, key = self._where[name]
        with safe_open(str(file), framework="pt") as handle:
            return handle.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def tensors(self, names: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) for ``names``, each file opened (mapped) for one batch of about BATCH_BYTES only."""
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self._where[name][0], []).append(name)
        for file, group in by_file.items():
            start = 0
            while start < len(group):
                end, size = start, 0
                while end < len(group) and (end == start or size + self._sizes[group[end]] <= self.BATCH_BYTES):
                    size += self._sizes[group[end]]
                    end += 1
                with safe_open(str(file), framework="pt") as handle:
                    for name in group[start:end]:
                        yield name, handle.get_tensor(self._where[name][1])
                start = end


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1}


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A single safetensors file, or a sharded one through its ``*.index.json`` (diffusers/transformers layout)."""
    path = Path(path)
    if path.is_dir():
        path = find_weights_file(path)
    index = Path(f"{path}.index.json")
    if not path.is_file() and index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(path.parent / shard)))
        return state
    return load_file(str(path))


def load_weights(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *, component: str, source: str,
                 allow_new: Iterable[str] = (), rename: Callable[[str], str | None] | None = None,
                 device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> LoadReport:
    """Copy ``state_dict`` into ``module`` or raise naming every bad key.

    ``module`` may live on the ``meta`` device (built without initialising, as :func:`build_and_load` does):
    it is then given empty storage and filled from the checkpoint, so a multi-billion-parameter model loads
    without spending minutes on a random initialisation that is overwritten anyway.

    Args:
        allow_new: name fragments (e.g. ``"attn_audio"``); missing keys containing one are not an error but
            are listed in ``LoadReport.newly_initialized``.
        rename: maps a checkpoint key to the module's key, or to None to ignore it (e.g. a Whisper decoder).
        device, dtype: for a ``meta`` module, where and in which dtype its storage is made (no fp32 transient,
            no CPU copy on the way to a GPU); ``state_dict`` may then be a :class:`LazyCheckpoint`.
    """
    report = LoadReport(component)
    lazy = isinstance(state_dict, LazyCheckpoint)
    if lazy:
        report.ignored = list(state_dict.ignored)
    elif rename is not None:
        renamed = {}
        for key, value in state_dict.items():
            new = rename(key)
            if new is None:
                report.ignored.append(key)
            else:
                renamed[new] = value
        state_dict = renamed
    own = module.state_dict()
    # Tied parameters (e.g. T5's shared embedding) appear under several names; one of them suffices. Ties are
    # found by object identity, which also works on the meta device (where every data_ptr is 0).
    groups: dict[int, list[str]] = {}
    for key, tensor in [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]:
        groups.setdefault(id(tensor), []).append(key)
    aliases = {key: names for names in groups.values() for key in names}
    covered = set(state_dict)
    missing = sorted(k for k in own if k not in covered and not any(a in covered for a in aliases.get(k, [k])))
    unexpected = sorted(k for k in state_dict if k not in own)
    shape_of = state_dict.shape if lazy else (lambda k: tuple(state_dict[k].shape))
    mismatched = sorted(f"{k} (checkpoint {shape_of(k)}, model {tuple(own[k].shape)})"
                        for k in state_dict if k in own and tuple(shape_of(k)) != tuple(own[k].shape))
    allowed = tuple(allow_new)
    new = [k for k in missing if allowed and any(a in k for a in allowed)]
    missing = [k for k in missing if k not in new]
    if missing or unexpected or mismatched:
        raise WeightsLoadError(component, source, missing, unexpected, mismatched)
    if any(t.is_meta for t in own.values()):
        if new:
            raise ValueError(f"{component}: a meta-device module cannot keep newly initialised keys {new}")
        # Fresh, allocator-aligned storage (ties survive ``to_empty``); then an ordinary copy. Assigning the
        # checkpoint's (mmap-backed) tensors directly would also work, but changes CPU kernel paths enough to
        # break bit-exact reproducibility between a freshly built and a loaded model.
        transient = [k for k, _ in module.named_buffers() if k not in own]
        if transient:  # non-persistent buffers are computed at init: they would stay uninitialised here
            raise ValueError(f"{component}: cannot build on meta, non-persistent buffers {transient}")
        if dtype is not None:
            cast_module(module, dtype)  # on meta: no memory is touched
        module.to_empty(device=device or "cpu")
        _retie(module, [names for names in groups.values() if len(names) > 1])
        targets = {**dict(module.named_parameters(remove_duplicate=False)),
                   **dict(module.named_buffers(remove_duplicate=False))}
        with torch.no_grad():
            items = state_dict.tensors(list(state_dict)) if lazy else state_dict.items()
            for key, value in items:
                targets[key].copy_(value)  # casts and moves one tensor at a time
                del value
    else:
        if lazy:
            state_dict = dict(state_dict.tensors(list(state_dict)))
        module.load_state_dict(state_dict, strict=False)
    report.loaded = sorted(state_dict)
    report.newly_initialized = new
    return report


def _retie(module: torch.nn.Module, groups: list[list[str]]) -> None:
    """``to_empty`` gives every module its own new storage, which unties shared parameters (T5's ``shared`` and
    ``encoder.embed_tokens``): point every name of a group at the first name's parameter again, so the one
    copy a checkpoint holds fills them all."""
    for names in groups:
        owner, _, leaf = names[0].rpartition(".")
        first = module.get_submodule(owner)._parameters.get(leaf) if leaf else None
        if first is None:
            continue
        for name in names[1:]:
            owner, _, leaf = name.rpartition(".")
            sub = module.get_submodule(owner)
            if leaf in sub._parameters:
                sub._parameters[leaf] = first


def build_and_load(factory: Callable[[], torch.nn.Module], state_dict: Mapping[str, torch.Tensor], *, component: str,
                   source: str, allow_new: Iterable[str] = (), rename: Callable[[str], str | None] | None = None,
                   device: str | torch.device | None = None,
                   dtype: torch.dtype | None = None) -> tuple[torch.nn.Module, LoadReport]:
    """Build ``factory()`` and load ``state_dict`` into it.

    Without ``allow_new`` the module is built on the ``meta`` device and the checkpoint is assigned (fast, no
    random init), then made directly in ``dtype`` on ``device``. With ``allow_new`` it is built normally, so
    the keys the checkpoint lacks keep a real initialisation (starting a fine-tune from stock LTX-Video); it is
    then cast and moved afterwards.
    """
    allow_new = tuple(allow_new)
    if allow_new:
        module = factory()
    else:
        with torch.device("meta"):
            module = factory()
    report = load_weights(module, state_dict, component=component, source=source, allow_new=allow_new,
                          rename=rename, device=device, dtype=dtype)
    if allow_new and (device is not None or dtype is not None):
        module.to(device=device)
        if dtype is not None:
            cast_module(module, dtype)
    return module, report
