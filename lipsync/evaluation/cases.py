"""What ``lipsync eval`` scores: (source video, audio, output video) triples from a folder or a CSV, and the
case list ``--server`` submits."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
AUDIO_EXTS = (".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".opus", *VIDEO_EXTS)


class CaseError(ValueError):
    """A case list or folder that cannot be read; the message names the file and the entry."""


@dataclass(frozen=True)
class Case:
    """One output to score. ``source`` (the input video) and ``audio`` (the driving audio) are optional:
    without the source, CSIM and the unchanged region are skipped; the sync score uses the output's own
    audio track, else ``audio``."""

    name: str
    output: Path
    source: Path | None = None
    audio: Path | None = None


@dataclass(frozen=True)
class ServerCase:
    """One request for ``--server``: local paths or URLs for the video and audio, plus any other input
    fields (``arguments``) sent as they are."""

    name: str
    video: str
    audio: str
    arguments: dict = field(default_factory=dict)


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "case"


def _find(folder: Path, stem: str, exts: tuple[str, ...]) -> Path | None:
    hits = sorted(p for p in folder.iterdir() if p.stem == stem and p.suffix.lower() in exts)
    return hits[0] if hits else None


def cases_from_folder(root: Path) -> list[Case]:
    """Every subfolder of ``root`` holding ``output.<video ext>`` (and optionally ``source.*``, ``audio.*``)
    is a case named after the subfolder."""
    if not root.is_dir():
        raise CaseError(f"{root}: not a folder")
    cases = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        output = _find(folder, "output", VIDEO_EXTS)
        if output is None:
            continue
        cases.append(Case(folder.name, output, _find(folder, "source", VIDEO_EXTS + (".png", ".jpg", ".jpeg", ".webp")), _find(folder, "audio", AUDIO_EXTS)))
    if not cases:
        raise CaseError(f"{root}: no subfolder holds an output.<{'|'.join(e[1:] for e in VIDEO_EXTS)}>")
    return cases


def cases_from_csv(path: Path) -> list[Case]:
    """A CSV with a header: ``output`` (required), ``source``, ``audio``, ``name``; relative paths are
    relative to the CSV's folder."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    cases = []
    for n, row in enumerate(rows, start=2):
        if not row.get("output"):
            raise CaseError(f"{path}:{n}: no `output` column value")
        resolve = lambda key: (path.parent / row[key]) if row.get(key) else None  # noqa: E731
        paths = {k: resolve(k) for k in ("output", "source", "audio")}
        for key, p in paths.items():
            if p is not None and not p.is_file():
                raise CaseError(f"{path}:{n}: {key} file {p} does not exist")
        cases.append(Case(row.get("name") or paths["output"].stem, paths["output"], paths["source"], paths["audio"]))
    if not cases:
        raise CaseError(f"{path}: no rows")
    return cases


def server_cases(path: Path) -> list[ServerCase]:
    """A JSON list of ``{"name", "video", "audio", …other input fields}``, or a CSV with ``video`` and
    ``audio`` columns (and ``name``). Relative file paths are relative to the list's folder."""
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as fh:
            raw = list(csv.DictReader(fh))
    else:
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CaseError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(raw, list) or not raw:
        raise CaseError(f"{path}: expected a non-empty list of cases")
    out = []
    for n, item in enumerate(raw):
        if not isinstance(item, dict) or not item.get("video") or not item.get("audio"):
            raise CaseError(f"{path}: case {n} needs `video` and `audio`")
        extra = {k: v for k, v in item.items() if k not in ("name", "video", "audio")}
        local = lambda v: v if re.match(r"^(https?|data):", v) else str(path.parent / v)  # noqa: E731
        out.append(ServerCase(safe_name(str(item.get("name") or f"case{n}")), local(item["video"]), local(item["audio"]), extra))
    return out
