"""``sync_mode``: what the output timeline does when the audio and the video are not the same length.

An extension of the hosted schema. The request's edits (``lipsync.media.timeline``) first make the *edited clip*
(L frames: the source frames read, plus additions and bridges, minus removals); the sync mode then lays that
clip over the output's N frames, output frame j showing clip frame ``order[j]``:

- ``cut_off`` (the default, the hosted behaviour): N = L, ``order[j] = j``; the audio is padded with silence
  or cut to the video (said in the logs).
- ``silence``: the same, but the *whole* input is read when ``num_frames`` is not given (``cut_off`` reads the
  first ``num_frames``, default 100); the audio is padded with silence (or cut when longer).
- ``loop``: N follows the audio; the clip plays again from its start: ``order[j] = j mod L``.
- ``bounce``: N follows the audio; the clip plays forward, then backward, and so on (ping-pong, the turning
  frames not doubled): 0, 1, …, L-1, L-2, …, 1, 0, 1, …
- ``remap``: N follows the audio; the clip is time-stretched to it by nearest frame:
  ``order[j] = floor((j + 1/2) · L / N)``.
- ``published``: N follows the audio; the clip cycles forward then backward with each turning frame shown
  twice: 0, 1, …, L-1, L-1, …, 1, 0, 0, 1, … (``k = j mod 2L``; ``k`` or ``2L-1-k``). This is the length rule
  of both published inferences that fix one: MuseTalk's ``frame_list + frame_list[::-1]`` indexed modulo its
  length, and LatentSync's ``loop_video`` (forward, reversed, forward, … cut to the whisper chunk count; the
  video cut to the audio when the audio is shorter). pipio and InfiniteTalk publish no such rule: ``published``
  means the same order for them, so a request's timeline never depends on the engine that serves it.
  LatentSync's published run is also at 25 fps (its video re-timed first): that is ``frame_rate: 25``, a
  separate field (MuseTalk's published run keeps the source's rate).

"Follows the audio": N = ceil(audio seconds · fps), so the whole audio is heard (its last frame padded with at
most one frame of silence); more than ``max_num_frames`` is refused (``InvalidInput`` on ``sync_mode``). The
whole input is read for ``loop``/``bounce``/``remap`` too when ``num_frames`` is not given; a still image is one
frame there. Generated frames (additions, bridges) repeat with their clip; each occurrence is generated.

``loop``, ``bounce`` and ``published`` show source frames out of order: ``iter_in_order`` streams such an order out of a
forward-only decode through an on-disk ``FrameStore`` (memory flat in the video's length).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from fractions import Fraction

import numpy as np

from lipsync.contract.errors import InvalidInput
from lipsync.contract.schema import AUDIO_LENGTH_MODES, SYNC_MODES, LipsyncInput
from lipsync.media.timeline import GeneratedFrame, GeneratedSpan, SourceFrame, Timeline



def frames_to_read(request: LipsyncInput, *, is_image: bool, max_num_frames: int) -> int:
    """How many input frames the request reads (``OutputSpec.num_frames`` of the decode)."""
    if is_image:  # a still has no length: num_frames of it, or one frame the audio's length decides on
        return 1 if request.sync_mode in AUDIO_LENGTH_MODES else request.num_frames
    return request.source_frame_bound(max_num_frames)


def sync_order(length: int, target: int, mode: str) -> np.ndarray:
    """(target,) int64: the clip frame (0..length-1) each output frame shows under ``mode``."""
    if length < 1 or target < 1:
        raise ValueError(f"a clip of {length} frames cannot fill {target} output frames")
    j = np.arange(target, dtype=np.int64)
    if mode in ("cut_off", "silence"):
        if target != length:
            raise ValueError(f"{mode} keeps the clip's length ({length}), not {target}")
        return j
    if mode == "loop":
        return j % length
    if mode == "bounce":
        if length == 1:
            return np.zeros(target, np.int64)
        period = 2 * (length - 1)
        k = j % period
        return np.where(k < length, k, period - k)
    if mode == "published":  # forward, then backward from the last frame again (the turning frames doubled)
        k = j % (2 * length)
        return np.where(k < length, k, 2 * length - 1 - k)
    if mode == "remap":
        return np.minimum((2 * j + 1) * length // (2 * target), length - 1)
    raise ValueError(f"unknown sync_mode {mode!r}; one of {', '.join(SYNC_MODES)}")


def output_frames_for_audio(seconds: float, fps: Fraction, max_num_frames: int, mode: str) -> int:
    """N for a mode whose output follows the audio: ceil(seconds · fps), at most ``max_num_frames``."""
    n = max(1, math.ceil(seconds * float(fps) - 1e-6))
    if n > max_num_frames:
        raise InvalidInput(
            f"sync_mode {mode} makes the output as long as the audio: {seconds:.2f} s at {float(fps):g} fps is {n} "
            f"frames, and at most {max_num_frames} (max_num_frames) are allowed; use cut_off or a shorter audio",
            field="sync_mode")
    return n


def fit_sync_mode(timeline: Timeline, mode: str, target: int | None = None) -> Timeline:
    """The edited clip ``timeline`` laid over ``target`` output frames by ``mode`` (``target`` None: the
    clip's own length, for ``cut_off`` and ``silence``). The spans are those of the output: runs of generated
    frames in output order, anchored on the source frames next to them in output order."""
    length = timeline.num_frames
    target = length if target is None or mode not in AUDIO_LENGTH_MODES else target
    order = sync_order(length, target, mode)
    if np.array_equal(order, np.arange(length)):
        return timeline
    frames = tuple(timeline.frames[k] for k in order)
    return Timeline(timeline.source_length, frames, _spans(frames), timeline.removed)


def _spans(frames: tuple) -> tuple[GeneratedSpan, ...]:
    spans: list[GeneratedSpan] = []
    j, n = 0, len(frames)
    while j < n:
        f = frames[j]
        if not isinstance(f, GeneratedFrame):
            j += 1
            continue
        start = j
        while j + 1 < n and isinstance(frames[j + 1], GeneratedFrame) and \
                (frames[j + 1].kind, frames[j + 1].edit) == (f.kind, f.edit):
            j += 1
        j += 1
        before = next((frames[i].index for i in range(start - 1, -1, -1) if isinstance(frames[i], SourceFrame)), None)
        after = next((frames[i].index for i in range(j, n) if isinstance(frames[i], SourceFrame)), None)
        spans.append(GeneratedSpan(f.kind, f.edit, start, j - start, before, after))
    return tuple(spans)


def iter_in_order(chunks: Iterator[np.ndarray], indices: np.ndarray, *, chunk_size: int,
                  workdir: str | os.PathLike[str] | None = None) -> Iterator[np.ndarray]:
    """Stream source frames ``indices`` (any order) out of a forward-only stream of source chunks, in chunks
    of ``chunk_size``. Non-decreasing indices go through ``iter_reindexed`` (no copy); any other order keeps
    the source frames it needs in an on-disk ``FrameStore`` first."""
    from lipsync.media.frame_store import FrameStore
    from lipsync.media.video import iter_reindexed

    indices = np.asarray(indices, np.int64)
    if not len(indices) or not np.any(np.diff(indices) < 0):
        yield from iter_reindexed(chunks, indices, chunk_size=chunk_size)
        return
    need = int(indices.max()) + 1
    store: FrameStore | None = None
    try:
        for chunk in chunks:
            if store is None:
                store = FrameStore(chunk.shape[1:], chunk.dtype, directory=workdir)
            store.append(chunk[: need - len(store)])
            if len(store) >= need:
                break
        if store is None or len(store) < need:
            raise RuntimeError(f"the source gave {0 if store is None else len(store)} frames, {need} are needed")
        for a in range(0, len(indices), chunk_size):
            yield store[indices[a : a + chunk_size]]
    finally:
        if store is not None:
            store.close()
