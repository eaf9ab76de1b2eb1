"""Streaming video decode: constant fps, output size, rotation applied, at most ``num_frames`` frames.

Frames come out as RGB uint8 arrays in chunks of shape (n, H, W, 3), so memory stays flat however long the
input is; ``iter_video_i420_chunks`` gives the same frames as decoded 4:2:0 planes (``lipsync.media.yuv``), for the
paste-and-encode side, which then never converts a whole frame. Variable frame rate is resampled to the output's constant rate by nearest timestamp: output frame
j (time j/fps from the first frame) shows the source frame whose timestamp is closest (the earlier one on a
tie); the last source frame lasts as long as the interval before it.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable, Iterator

import av
import cv2
import numpy as np

from lipsync.media.errors import TruncatedMedia
from lipsync.media.probe import OutputSpec, check_decodable, is_image_file, open_container, read_image, rotation_of
from lipsync.media.yuv import ENCODE_COLOUR, Colour, frame_colour, planes, rgb_to_i420

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 16
"""Frames per decoded chunk (16 frames of 720p RGB = 44 MB)."""

_EPS = 1e-6


def resize_frame(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize with area averaging when shrinking and bicubic when enlarging; no copy if already the size."""
    h, w = rgb.shape[:2]
    if (w, h) == (width, height):
        return rgb
    interp = cv2.INTER_AREA if width * height < w * h else cv2.INTER_CUBIC
    return cv2.resize(rgb, (width, height), interpolation=interp)


def iter_video_chunks(
    path: str | os.PathLike[str], spec: OutputSpec, *, chunk_size: int = DEFAULT_CHUNK, field: str = "video"
) -> Iterator[np.ndarray]:
    """Yield the output frames of a ``video`` input (video or still image) as (n, H, W, 3) uint8 chunks.

    Video: resampled to ``spec.fps``, resized to ``spec.width`` x ``spec.height``, rotation applied, at most
    ``spec.num_frames`` frames from the start. Image: the still repeated ``spec.num_frames`` times.
    Raises TruncatedMedia (422 on ``field``) when the stream breaks off or holds no decodable frame.
    """
    path = os.fspath(path)
    frames = _iter_image(path, spec, field) if is_image_file(path) else _iter_video(path, spec, field)
    yield from _batched(frames, chunk_size, (spec.height, spec.width, 3))


def i420_colour(path: str | os.PathLike[str], spec: OutputSpec, *, field: str = "video") -> Colour:
    """The colour ``iter_video_i420_chunks`` gives its frames in: the source's own when its decoded planes
    can be passed on as they are (8-bit 4:2:0, BT.601/709, already at the output size once rotated),
    otherwise ``ENCODE_COLOUR`` (each frame is then converted through RGB, as ``iter_video_chunks`` does)."""
    path = os.fspath(path)
    if is_image_file(path):
        return ENCODE_COLOUR
    with open_container(path, field) as container:
        stream = container.streams.video[0]
        first = next(container.decode(stream), None)
    if first is None:
        return ENCODE_COLOUR
    colour = frame_colour(first)
    size = (first.height, first.width) if rotation_of(first) % 180 else (first.width, first.height)
    return colour if colour is not None and size == (spec.width, spec.height) else ENCODE_COLOUR


def iter_video_i420_chunks(
    path: str | os.PathLike[str], spec: OutputSpec, colour: Colour, *, chunk_size: int = DEFAULT_CHUNK,
    field: str = "video",
) -> Iterator[np.ndarray]:
    """The frames of ``iter_video_chunks`` as I420 chunks (n, H * 3 / 2, W) in ``colour`` (from
    ``i420_colour``): the decoder's planes themselves where they match, else converted through RGB."""
    path = os.fspath(path)
    if is_image_file(path):
        frames = _iter_image(path, spec, field, convert=lambda rgb: rgb_to_i420(rgb, colour))
    else:
        frames = _iter_video(path, spec, field, _I420Converter(spec, colour))
    yield from _batched(frames, chunk_size, (spec.height * 3 // 2, spec.width))


def _batched(frames: Iterator[np.ndarray], chunk_size: int, shape: tuple[int, ...]) -> Iterator[np.ndarray]:
    """Copy frames straight into a fresh (chunk_size, *shape) buffer per chunk (no list + stack copy)."""
    buf = np.empty((chunk_size, *shape), np.uint8)
    n = 0
    for frame in frames:
        buf[n] = frame
        n += 1
        if n == chunk_size:
            yield buf
            buf = np.empty((chunk_size, *shape), np.uint8)
            n = 0
    if n:
        yield buf[:n]


def iter_video_frames(
    path: str | os.PathLike[str], spec: OutputSpec, *, field: str = "video"
) -> Iterator[np.ndarray]:
    """Same frames as ``iter_video_chunks``, one (H, W, 3) array at a time."""
    path = os.fspath(path)
    return _iter_image(path, spec, field) if is_image_file(path) else _iter_video(path, spec, field)


def read_video(path: str | os.PathLike[str], spec: OutputSpec, *, field: str = "video") -> np.ndarray:
    """All output frames at once, (T, H, W, 3) uint8. For short clips and tests; prefer the iterators."""
    chunks = list(iter_video_chunks(path, spec, field=field))
    return np.concatenate(chunks) if chunks else np.zeros((0, spec.height, spec.width, 3), np.uint8)


def _iter_image(path: str, spec: OutputSpec, field: str, convert=None) -> Iterator[np.ndarray]:
    still = resize_frame(read_image(path, field), spec.width, spec.height)
    if convert is not None:
        still = convert(still)
    still.setflags(write=False)
    for _ in range(spec.num_frames):
        yield still


class _Converter:
    """Turns a decoded frame into an output-sized RGB array, rotation applied. The last result is cached:
    resampling to a higher fps hands the same decoded frame over several times."""

    def __init__(self, spec: OutputSpec):
        self.spec = spec
        self._last_key: object = None
        self._last: np.ndarray | None = None

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if frame is not self._last_key or self._last is None:
            out = self.convert(frame)
            out.setflags(write=False)
            self._last_key, self._last = frame, out
        return self._last

    def convert(self, frame: av.VideoFrame) -> np.ndarray:
        k = rotation_of(frame) // 90
        w, h = (self.spec.height, self.spec.width) if k % 2 else (self.spec.width, self.spec.height)
        rgb = resize_frame(frame.to_ndarray(format="rgb24"), w, h)
        return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


class _I420Converter(_Converter):
    """A decoded frame as an output-sized I420 array in ``colour``: its own planes (rotated) when the frame
    is already 8-bit 4:2:0 in that colour and size, else the RGB conversion and ``rgb_to_i420``."""

    def __init__(self, spec: OutputSpec, colour: Colour):
        super().__init__(spec)
        self.colour = colour

    def convert(self, frame: av.VideoFrame) -> np.ndarray:
        k = rotation_of(frame) // 90
        size = (frame.height, frame.width) if k % 2 else (frame.width, frame.height)
        if frame_colour(frame) == self.colour and size == (self.spec.width, self.spec.height):
            out = frame.to_ndarray()
            return _rotate_i420(out, k) if k else out
        return rgb_to_i420(super().convert(frame), self.colour)


def _rotate_i420(i420: np.ndarray, k: int) -> np.ndarray:
    """An I420 frame turned ``k`` quarter turns counter-clockwise, plane by plane."""
    y, u, v = (np.rot90(p, k) for p in planes(i420))
    out = np.empty((y.shape[0] * 3 // 2, y.shape[1]), np.uint8)
    for dst, src in zip(planes(out), (y, u, v)):
        dst[...] = src
    return out


def _iter_video(path: str, spec: OutputSpec, field: str, convert=None) -> Iterator[np.ndarray]:
    convert = convert or _Converter(spec)
    step = 1.0 / float(spec.fps)
    emitted = 0
    decoded = 0
    with open_container(path, field) as container:
        stream = container.streams.video[0]
        check_decodable(stream, field)
        stream.thread_type = "AUTO"
        announced = int(stream.frames or 0)
        prev: av.VideoFrame | None = None
        prev_t = t0 = 0.0
        prev_dur = step
        try:
            for frame in container.decode(stream):
                if frame.time is None:  # no timestamp: assume it follows the previous frame
                    t = prev_t + prev_dur if decoded else 0.0
                else:
                    if decoded == 0:
                        t0 = frame.time
                    t = frame.time - t0
                decoded += 1
                if prev is not None:
                    mid = (prev_t + t) / 2.0
                    while emitted < spec.num_frames and emitted * step <= mid + _EPS:  # a tie keeps the earlier frame
                        yield convert(prev)
                        emitted += 1
                    prev_dur = max(t - prev_t, _EPS)
                if emitted >= spec.num_frames:
                    return
                prev, prev_t = frame, t
        except av.FFmpegError as exc:
            raise TruncatedMedia(
                f"the {field} video breaks off after {decoded} frames; the file is truncated or corrupt "
                f"({exc.strerror or exc})",
                field=field,
            ) from exc
        if prev is None:
            raise TruncatedMedia(f"the {field} video holds no decodable frame", field=field)
        if announced and decoded < announced - 1:
            raise TruncatedMedia(
                f"the {field} video announces {announced} frames but only {decoded} could be decoded; "
                "the file is truncated",
                field=field,
            )
        # The last source frame covers its own duration.
        end = prev_t + prev_dur
        while emitted < spec.num_frames and emitted * step < end - _EPS:
            yield convert(prev)
            emitted += 1
    if emitted < spec.num_frames:
        log.info("the %s video ends after %d output frames (num_frames was %d)", field, emitted, spec.num_frames)


def _pick(chunks: Iterator[np.ndarray], indices: np.ndarray) -> Iterator[np.ndarray]:
    pos = base = 0
    for chunk in chunks:
        while pos < len(indices) and indices[pos] < base + len(chunk):
            yield chunk[indices[pos] - base]
            pos += 1
        base += len(chunk)
        if pos == len(indices):
            return
    if pos < len(indices):
        raise ValueError(f"source frame {int(indices[pos])} was asked for but the source has {base} frames")


def rebatch(chunks: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Re-cut a stream of (k, ...) arrays into arrays of exactly ``size`` rows (the last may be shorter)."""
    pending: list[np.ndarray] = []
    have = 0
    for chunk in chunks:
        pending.append(chunk)
        have += len(chunk)
        while have >= size:
            joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield joined[:size]
            rest = joined[size:]
            pending, have = ([rest] if len(rest) else []), len(rest)
    if have:
        yield np.concatenate(pending) if len(pending) > 1 else pending[0]


def _first_frames(chunks: Iterator[np.ndarray], count: int, chunk_size: int) -> Iterator[np.ndarray]:
    """The first ``count`` frames of the stream, its own chunks passed on (re-cut only where a chunk is not
    ``chunk_size`` long)."""
    left = count
    for chunk in rebatch(chunks, chunk_size):
        if left <= 0:
            return
        yield chunk[:left]
        left -= len(chunk)
    if left > 0:
        raise ValueError(f"source frame {count - left} was asked for but the source has {count - left} frames")


def iter_reindexed(
    chunks: Iterator[np.ndarray], indices: np.ndarray, *, chunk_size: int = DEFAULT_CHUNK
) -> Iterator[np.ndarray]:
    """Stream the frames ``indices`` (non-decreasing source indices, e.g. ``Timeline.background_indices``)
    out of a forward-only stream of source chunks, in chunks of ``chunk_size``: frames repeat or are skipped
    without holding more than one source chunk in memory."""
    if len(indices) and np.any(np.diff(indices) < 0):
        raise ValueError("indices must not decrease (the source is read forward only)")
    if np.array_equal(indices, np.arange(len(indices))):  # the timeline is the source: no copy
        yield from _first_frames(chunks, len(indices), chunk_size)
        return
    frames = _pick(chunks, indices)
    first = next(frames, None)
    if first is None:
        return
    yield from _batched(itertools.chain([first], frames), chunk_size, first.shape)
