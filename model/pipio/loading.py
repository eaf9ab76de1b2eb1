"""Strict weight loading from safetensors files / diffusers-layout directories, with errors that name keys.

``load_weights`` compares a checkpoint with a module and raises :class:`WeightsLoadError` listing *every*
missing, unexpected and wrongly shaped key, unless the missing keys are lip-sync modules the caller allows to
be newly initialised (starting from a stock LTX-Video checkpoint); those are reported back instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors")


class WeightsLoadError(ValueError):
    """A checkpoint does not match the module: lists every offending key."""

    def __init__(self, component: str, source: str, missing: list[str], unexpected: list[str],
                 mismatched: list[str]):
        self.component, self.source = component, source
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        parts = [f"cannot load {component} weights from {source}:"]
        if missing:
            parts.append(f"{len(missing)} missing key(s): {', '.join(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es): {', '.join(mismatched)}")
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


def load_weights(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], *, component: str, source: str,
                 allow_new: Iterable[str] = (), rename: Callable[[str], str | None] | None = None) -> LoadReport:
    """Copy ``state_dict`` into ``module`` or raise naming every bad key.

    ``module`` may live on the ``meta`` device (built without initialising, as :func:`build_and_load` does):
    it is then given empty storage and filled from the checkpoint, so a multi-billion-parameter model loads
    without spending minutes on a random initialisation that is overwritten anyway.

    Args:
        allow_new: name fragments (e.g. ``"attn_audio"``); missing keys containing one are not an error but
            are listed in ``LoadReport.newly_initialized``.
        rename: maps a checkpoint key to the module's key, or to None to ignore it (e.g. a Whisper decoder).
    """
    report = LoadReport(component)
    if rename is not None:
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
    mismatched = sorted(f"{k} (checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)})"
                        for k, v in state_dict.items() if k in own and v.shape != own[k].shape)
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
        module.to_empty(device="cpu")
    module.load_state_dict(state_dict, strict=False)
    report.loaded = sorted(state_dict)
    report.newly_initialized = new
    return report


def build_and_load(factory: Callable[[], torch.nn.Module], state_dict: dict[str, torch.Tensor], *, component: str,
                   source: str, allow_new: Iterable[str] = (),
                   rename: Callable[[str], str | None] | None = None) -> tuple[torch.nn.Module, LoadReport]:
    """Build ``factory()`` and load ``state_dict`` into it.

    Without ``allow_new`` the module is built on the ``meta`` device and the checkpoint is assigned (fast, no
    random init). With ``allow_new`` it is built normally, so the keys the checkpoint lacks keep a real
    initialisation (starting a fine-tune from stock LTX-Video).
    """
    allow_new = tuple(allow_new)
    if allow_new:
        module = factory()
    else:
        with torch.device("meta"):
            module = factory()
    report = load_weights(module, state_dict, component=component, source=source, allow_new=allow_new,
                          rename=rename)
    return module, report
