"""Which engine a weights folder holds, what is missing from it, and how to fetch it.

Each engine folder ``lipsync/model/<engine>/`` has a torch-free ``layout.py`` with ``LAYOUTS``: the published file
layouts it loads (file names as the authors publish them, the public repository each file comes from, its
licence), and an ``engine.py`` with ``load_engine(weights_dir, layout, options)``. Detection reads only file
names: a layout matches when one of its ``markers`` exists (MuseTalk: ``musetalkV15/unet.pth``; LatentSync:
``latentsync_unet.pt``; ours: ``model_index.json``). ``LIPSYNC_ENGINE`` overrides detection.

No folder, or an empty one (a fresh Docker volume), means pipio with random weights, said loudly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import get_args

from lipsync.contract.settings import EngineName

ENGINES: tuple[str, ...] = get_args(EngineName)
"""Engine names (``lipsync.contract.settings.EngineName``), in detection order; each is a package ``lipsync.model.<name>`` with
``layout``, ``loading``, ``crop_rule``, ``engine`` and ``random_weights``."""


class WeightsFolderError(RuntimeError):
    """The weights folder matches no engine, or matches one with files missing: a start-up error."""


@dataclass(frozen=True)
class WeightFile:
    path: str
    """Path inside the weights folder, as the published layout names it."""
    repo: str
    """Public repository it comes from (a Hugging Face model repo id), or "" when it is made locally."""
    filename: str
    """File name inside ``repo``."""
    licence: str
    alternatives: tuple[str, ...] = ()
    """Other accepted paths for the same file (``.safetensors`` for ``.bin``, sharded indexes)."""
    required: bool = True

    def found(self, root: Path) -> Path | None:
        for rel in (self.path, *self.alternatives):
            if (root / rel).is_file():
                return root / rel
        return None

    def source(self) -> str:
        return f"{self.repo}/{self.filename}" if self.repo else self.filename


@dataclass(frozen=True)
class WeightsLayout:
    engine: str
    """Engine package name (``musetalk``)."""
    variant: str
    """Label shown in logs and metrics (``musetalk-1.5``)."""
    markers: tuple[str, ...]
    files: tuple[WeightFile, ...]
    notes: str = ""

    def matches(self, root: Path) -> bool:
        return any((root / m).exists() for m in self.markers)


@dataclass
class WeightsCheck:
    root: Path | None
    layout: WeightsLayout
    present: list[tuple[WeightFile, Path]] = field(default_factory=list)
    missing: list[WeightFile] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.required for f in self.missing)

    def report(self) -> str:
        lines = [f"engine: {self.layout.variant} ({self.layout.engine})" + (f" in {self.root}" if self.root else "")]
        for f, path in self.present:
            lines.append(f"  ok       {f.path:<48} {path.stat().st_size:>14,} bytes  ({f.licence})")
        for f in self.missing:
            kind = "MISSING " if f.required else "optional"
            lines.append(f"  {kind} {f.path:<48} from {f.source()}  ({f.licence})")
        return "\n".join(lines)


def layouts(engine: str | None = None) -> list[WeightsLayout]:
    names = ENGINES if engine is None else (engine,)
    if engine is not None and engine not in ENGINES:
        raise WeightsFolderError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    return [layout for name in names for layout in import_module(f"lipsync.model.{name}.layout").LAYOUTS]


def check_layout(root: Path | None, layout: WeightsLayout) -> WeightsCheck:
    check = WeightsCheck(root, layout)
    for f in layout.files:
        path = f.found(root) if root is not None else None
        if path is None:
            check.missing.append(f)
        else:
            check.present.append((f, path))
    return check


def is_empty(root: Path | None) -> bool:
    return root is None or (root.is_dir() and not any(root.iterdir()))


def detect(root: Path | None, engine: str | None = None) -> WeightsCheck:
    """The engine a folder holds (``engine`` forces one), with what is there and what is missing.

    Raises WeightsFolderError when the folder does not exist or matches no layout. A check with missing
    required files is returned, not raised: ``require`` raises it, ``lipsync weights check`` prints it.
    """
    if root is not None and not root.exists():
        raise WeightsFolderError(f"weights folder {root} does not exist")
    if is_empty(root):
        name = engine or "pipio"
        if name != "pipio":
            raise WeightsFolderError(f"LIPSYNC_ENGINE={name} needs a weights folder; {_expected(layouts(name))}")
        return WeightsCheck(root, layouts("pipio")[0])  # random weights: nothing is expected on disk
    candidates = layouts(engine)
    for layout in candidates:
        if layout.matches(root):
            return check_layout(root, layout)
    if engine is not None:  # forced: report against its first layout so the user sees what to put there
        return check_layout(root, candidates[0])
    raise WeightsFolderError(f"{root} holds no engine's weights: {_expected(candidates)}")


def require(check: WeightsCheck) -> WeightsCheck:
    if not check.ok:
        missing = [f for f in check.missing if f.required]
        listing = "; ".join(f"{f.path} (from {f.source()})" for f in missing)
        raise WeightsFolderError(f"{check.root} looks like {check.layout.variant} but is missing {len(missing)} "
                                 f"file(s): {listing}")
    return check


def _expected(candidates: list[WeightsLayout]) -> str:
    return "expected one of: " + "; ".join(f"{l.variant} (marker {' or '.join(l.markers)})" for l in candidates)


def load_engine(root: Path | None, options, engine: str | None = None):
    """Detect, check and load the engine for a weights folder (the worker's start-up)."""
    check = require(detect(root, engine))
    module = import_module(f"lipsync.model.{check.layout.engine}.engine")
    return module.load_engine(None if is_empty(root) else root, check.layout, options)


def fetch(engine: str, root: Path, *, variant: str | None = None,
          on_file: Callable[[WeightFile], None] | None = None) -> WeightsCheck:
    """Download an engine's published files into ``root`` in its layout (needs internet and huggingface_hub).

    Files are downloaded straight into the folder (no second copy in the hub cache); files already there are
    kept. Files with no hub repository (optional extras published elsewhere) are left to the user and listed
    by the returned check. ``on_file`` is called before each download (progress for the CLI).
    """
    import shutil

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    candidates = [l for l in layouts(engine) if variant is None or l.variant == variant]
    if not candidates:
        raise WeightsFolderError(f"no layout {variant!r} for {engine}")
    layout = candidates[0]
    if not any(f.repo for f in layout.files):
        raise WeightsFolderError(f"{layout.variant} has no published weights to download. {layout.notes}")
    root.mkdir(parents=True, exist_ok=True)
    for f in layout.files:
        if not f.repo or f.found(root) is not None:
            continue
        if on_file is not None:
            on_file(f)
        target = root / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if f.path.endswith(f.filename):  # the repo's own sub-path: download in place
                hf_hub_download(f.repo, f.filename, local_dir=root / f.path[: len(f.path) - len(f.filename)])
            else:
                shutil.copyfile(hf_hub_download(f.repo, f.filename), target)
        except LocalEntryNotFoundError as exc:  # offline, or the hub is unreachable
            raise WeightsFolderError(
                f"could not reach the Hugging Face Hub to download {f.source()} for {f.path} (no internet on this "
                f"machine, or HF_HUB_OFFLINE set): run `lipsync weights fetch {engine} DIR` where there is "
                f"internet and copy DIR here ({type(exc).__name__})") from exc
        except Exception as exc:  # gated repo, renamed file: say which file and why
            if f.required:
                raise WeightsFolderError(f"could not download {f.source()} for {f.path}: {exc}") from exc
    return check_layout(root, layout)


RANDOM_SIZES = ("small", "published")
"""``small``: networks that run on a CPU in seconds (tests); ``published``: the published network sizes."""


def write_random_weights(engine: str, root: Path, *, size: str = "small", seed: int = 0) -> Path:
    """Random weights of ``engine`` in exactly the layout its loader reads (``lipsync/model/<engine>/random_weights.py``),
    for tests, benchmarks and smoke runs where no trained weights can be downloaded. Never a trained model."""
    if engine not in ENGINES or size not in RANDOM_SIZES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)} and size one of {', '.join(RANDOM_SIZES)}")
    module = import_module(f"lipsync.model.{engine}.random_weights")
    if engine == "pipio":
        return module.write_random_weights(root, module.SIZES[size], seed=seed)
    if engine == "musetalk":
        return module.write_random_weights(root, size=size, seed=seed)
    if size == "published":
        return module.write_published_weights(root, seed=seed)
    return module.write_random_weights(root, seed=seed)
