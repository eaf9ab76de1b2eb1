"""The output timeline: one pure function from (input length, additions, removals with bridges) to a plan.

Rules (``reference/input-schema.md``, ``model-design.md`` §4.2), with T0 the input length in frames:

- An addition at start frame p with duration d puts d generated frames right before source frame p
  (p == T0 appends them after the last frame).
- A removal [a, b] (inclusive) deletes source frames a..b; its bridge of n frames (n may be 0, a jump cut)
  is generated in their place, between the nearest kept source frames on each side.
- When a bridge and an addition land at the same place, the bridge comes first.
- Output length = T0 + sum(additions) - removed + sum(bridges). The audio follows the output timeline:
  output frame j plays the audio at time j/fps whatever the edits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from lipsync.contract.errors import InvalidInput

EditKind = Literal["addition", "bridge"]

F_ADD_START = "edit_addition_start_frames"
F_ADD_DUR = "edit_addition_durations"
F_RANGES = "edit_removal_ranges"
F_BRIDGES = "edit_removal_bridge_durations"


@dataclass(frozen=True)
class SourceFrame:
    """Output frame showing source frame ``index``."""

    index: int


@dataclass(frozen=True)
class GeneratedFrame:
    """Output frame the model generates: frame ``position`` of edit ``edit`` of kind ``kind``.

    ``edit`` indexes the request's lists: the addition's position in ``edit_addition_*`` or the removal
    pair's position in ``edit_removal_ranges`` / ``edit_removal_bridge_durations``.
    """

    kind: EditKind
    edit: int
    position: int


PlannedFrame = SourceFrame | GeneratedFrame


@dataclass(frozen=True)
class GeneratedSpan:
    """A run of generated output frames and the kept source frames around it (its conditioning anchors)."""

    kind: EditKind
    edit: int
    output_start: int
    length: int
    source_before: int | None
    """Nearest kept source frame before the span (None at the start of the video)."""
    source_after: int | None
    """Nearest kept source frame after the span (None at the end of the video)."""


@dataclass(frozen=True)
class Timeline:
    source_length: int
    frames: tuple[PlannedFrame, ...]
    spans: tuple[GeneratedSpan, ...]
    removed: int
    """Number of source frames removed."""

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def generated(self) -> tuple[int, ...]:
        """Output indices the model must generate from scratch."""
        return tuple(i for i, f in enumerate(self.frames) if isinstance(f, GeneratedFrame))

    def source_indices(self) -> np.ndarray:
        """(num_frames,) int64: the source frame of each output frame, -1 where it is generated."""
        return np.array([f.index if isinstance(f, SourceFrame) else -1 for f in self.frames], dtype=np.int64)

    def background_indices(self) -> np.ndarray:
        """(num_frames,) int64 source frame to show behind each output frame (never -1).

        A source frame is its own background; a generated frame takes the nearer anchor of its span
        (``source_before`` for the first half, ``source_after`` for the second; the one that exists at the
        video's ends). The result never decreases, so it can be read from a forward-only decode
        (``lipsync.media.video.iter_reindexed``). A span with no anchor at all (everything removed) uses frame 0.
        """
        out = self.source_indices()
        for span in self.spans:
            for j in range(span.length):
                first_half = j < span.length / 2
                pick = span.source_before if first_half else span.source_after
                if pick is None:
                    pick = span.source_after if first_half else span.source_before
                out[span.output_start + j] = 0 if pick is None else pick
        return out


def _ints(values: Sequence[int], field: str) -> list[int]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise InvalidInput(f"{field} must hold integers, got {v!r}", field=field)
        out.append(int(v))
    return out


def _check_additions(starts: list[int], durations: list[int], source_length: int) -> None:
    if len(starts) != len(durations):
        raise InvalidInput(
            f"{F_ADD_DUR} has {len(durations)} entries but {F_ADD_START} has {len(starts)}; they must match",
            field=F_ADD_DUR,
        )
    for k, (p, d) in enumerate(zip(starts, durations)):
        if not 0 <= p <= source_length:
            raise InvalidInput(
                f"{F_ADD_START}[{k}] = {p} is outside the input (0..{source_length}; {source_length} appends)",
                field=F_ADD_START,
            )
        if d < 1:
            raise InvalidInput(f"{F_ADD_DUR}[{k}] = {d}; each addition must add at least 1 frame", field=F_ADD_DUR)
    if len(set(starts)) != len(starts):
        raise InvalidInput(f"{F_ADD_START} has the same start frame twice: {starts}", field=F_ADD_START)


def _check_removals(flat: list[int], bridges: list[int], source_length: int) -> list[tuple[int, int]]:
    if len(flat) % 2:
        raise InvalidInput(f"{F_RANGES} must hold [start, end] pairs; it has {len(flat)} numbers", field=F_RANGES)
    pairs = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
    if len(bridges) != len(pairs):
        raise InvalidInput(
            f"{F_BRIDGES} has {len(bridges)} entries but {F_RANGES} has {len(pairs)} pairs; they must match",
            field=F_BRIDGES,
        )
    for k, n in enumerate(bridges):
        if n < 0:
            raise InvalidInput(f"{F_BRIDGES}[{k}] = {n}; a bridge is 0 (jump cut) or more frames", field=F_BRIDGES)
    prev_end = -1
    for k, (a, b) in enumerate(pairs):
        if a > b:
            raise InvalidInput(f"{F_RANGES} pair {k} [{a}, {b}] has start > end", field=F_RANGES)
        if a < 0 or b >= source_length:
            raise InvalidInput(
                f"{F_RANGES} pair {k} [{a}, {b}] is outside the input frames 0..{source_length - 1}",
                field=F_RANGES,
            )
        if a <= prev_end:
            raise InvalidInput(
                f"{F_RANGES} pair {k} [{a}, {b}] overlaps or precedes the previous pair; pairs must be sorted "
                "and non-overlapping",
                field=F_RANGES,
            )
        prev_end = b
    return pairs


def plan_timeline(
    source_length: int,
    *,
    addition_start_frames: Sequence[int] = (),
    addition_durations: Sequence[int] = (),
    removal_ranges: Sequence[int] = (),
    removal_bridge_durations: Sequence[int] = (),
) -> Timeline:
    """Build the output timeline; raise InvalidInput naming the request field for any impossible edit."""
    if source_length < 1:
        raise InvalidInput(f"the input has {source_length} frames; at least 1 is needed", field="num_frames")
    starts = _ints(addition_start_frames, F_ADD_START)
    durations = _ints(addition_durations, F_ADD_DUR)
    flat = _ints(removal_ranges, F_RANGES)
    bridges = _ints(removal_bridge_durations, F_BRIDGES)
    _check_additions(starts, durations, source_length)
    pairs = _check_removals(flat, bridges, source_length)

    removed = np.zeros(source_length, dtype=bool)
    for a, b in pairs:
        removed[a : b + 1] = True
    for k, p in enumerate(starts):
        if p < source_length and removed[p]:
            raise InvalidInput(
                f"{F_ADD_START}[{k}] = {p} falls inside a removed range of {F_RANGES}", field=F_ADD_START
            )

    # Insertions keyed by "before source frame p": bridges (at b + 1) first, then additions.
    inserts: dict[int, list[tuple[EditKind, int, int]]] = {}
    for k, ((_, b), n) in enumerate(zip(pairs, bridges)):
        if n > 0:
            inserts.setdefault(b + 1, []).append(("bridge", k, n))
    for k, (p, d) in enumerate(zip(starts, durations)):
        inserts.setdefault(p, []).append(("addition", k, d))

    kept = np.flatnonzero(~removed)
    frames: list[PlannedFrame] = []
    spans: list[GeneratedSpan] = []
    for p in range(source_length + 1):
        for kind, k, n in inserts.get(p, []):
            before = kept[kept < p]
            after = kept[kept >= p]
            spans.append(
                GeneratedSpan(
                    kind, k, len(frames), n,
                    int(before[-1]) if before.size else None,
                    int(after[0]) if after.size else None,
                )
            )
            frames.extend(GeneratedFrame(kind, k, j) for j in range(n))
        if p < source_length and not removed[p]:
            frames.append(SourceFrame(p))
    if not frames:
        raise InvalidInput(
            f"{F_RANGES} removes every frame and no bridge or addition is left; the output would be empty",
            field=F_RANGES,
        )
    return Timeline(source_length, tuple(frames), tuple(spans), int(removed.sum()))


def _edit_list(request: object, name: str) -> Sequence[int]:
    value = request.get(name) if isinstance(request, dict) else getattr(request, name, None)
    return value or ()


def requests_edits(request: object) -> bool:
    """Whether the request asks for any timeline edit (without one the output timeline is the source's)."""
    return any(_edit_list(request, name) for name in (F_ADD_START, F_ADD_DUR, F_RANGES, F_BRIDGES))


def plan_from_request(source_length: int, request: object) -> Timeline:
    """``plan_timeline`` with the four ``edit_*`` lists read off a request object (attributes or a dict)."""

    return plan_timeline(
        source_length,
        addition_start_frames=_edit_list(request, F_ADD_START),
        addition_durations=_edit_list(request, F_ADD_DUR),
        removal_ranges=_edit_list(request, F_RANGES),
        removal_bridge_durations=_edit_list(request, F_BRIDGES),
    )
