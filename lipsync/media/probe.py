"""Look at an input file before decoding it: what it is, its native geometry, and the output geometry.

``probe_video`` opens the file once, decodes one frame to prove the codec works and to read the rotation, and
raises a typed error naming the field for every unusable input. ``resolve_output_spec`` turns the schema's
``frame_rate`` / ``height`` / ``width`` / ``num_frames`` values into concrete numbers.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import av
import cv2
import numpy as np
import PIL.Image

from lipsync.contract.errors import InvalidInput
from lipsync.media.errors import (
    ImageTooLarge,
    ImageTooSmall,
    ImplausibleFrameRate,
    NoVideoStream,
    NotAMediaFile,
    TruncatedMedia,
    UnsupportedCodec,
)

log = logging.getLogger(__name__)

MIN_SIDE = 64
# 4096 x 4096: above 4K UHD (3840 x 2160). Checked on the header, so a "decompression bomb" (a tiny file that
# declares 100k x 100k pixels) is refused before the decoder allocates anything.
MAX_PIXELS = 4096 * 4096
"""Smallest accepted height or width (pixels, after rotation) of a video or image input."""

IMAGE_FPS = Fraction(25)
"""Frame rate of an animated still when the request leaves ``frame_rate`` at -1."""

MAX_FPS = 120
MIN_FPS = 1
"""Lowest output frame rate (the schema's lowest ``frame_rate``). A video whose native rate is lower (its
timestamps spread few frames over hours) is refused at its native rate: the output, and the audio laid under
it, would last ``num_frames / fps`` seconds, so memory would grow with what the file declares."""

# Leading bytes of container formats FFmpeg reads. A file that starts like one of these but fails to open
# is reported as truncated rather than as "not a media file".
_CONTAINER_MAGIC: tuple[tuple[int, bytes], ...] = (
    (4, b"ftyp"),  # ISO BMFF: mp4, mov, m4a
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"free"),
    (4, b"wide"),
    (0, b"\x1a\x45\xdf\xa3"),  # EBML: mkv, webm
    (0, b"RIFF"),  # wav, avi, webp
    (0, b"OggS"),
    (0, b"fLaC"),
    (0, b"ID3"),
    (0, b"FLV"),
    (0, b"\x00\x00\x01\xba"),  # MPEG-PS
    (0, b"GIF8"),
)
_IMAGE_MAGIC: tuple[tuple[int, bytes], ...] = (
    (0, b"\x89PNG\r\n\x1a\n"),
    (0, b"\xff\xd8\xff"),
    (0, b"BM"),
)


@dataclass(frozen=True)
class MediaInfo:
    """What a ``video`` input is. Sizes are the displayed ones, after rotation metadata is applied."""

    path: str
    kind: Literal["video", "image"]
    width: int
    height: int
    fps: Fraction
    """Native (average) frame rate; ``IMAGE_FPS`` for an image."""
    frame_count: int | None
    """Frames the container announces (None when unknown; None for an image)."""
    duration_s: float | None
    rotation: int
    """Degrees counter-clockwise the decoded picture is turned to display it (0, 90, 180 or 270)."""
    codec: str
    has_audio: bool


@dataclass(frozen=True)
class OutputSpec:
    """The output geometry resolved from the request: constant fps, even size, base frame count."""

    fps: Fraction
    width: int
    height: int
    num_frames: int
    """Upper bound of the base length T0: the decoder yields at most this many frames (fewer if the video
    is shorter; the exact T0 is the number of frames the decode yields)."""


def _starts_with(head: bytes, table: tuple[tuple[int, bytes], ...]) -> bool:
    return any(head[off : off + len(magic)] == magic for off, magic in table)


def _read_head(path: str, field: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(64)
    except OSError as exc:
        raise NotAMediaFile(f"cannot read the {field} file: {exc.strerror}", field=field) from exc


def is_image_file(path: str) -> bool:
    """True for png/jpg/bmp/webp stills (by content, not by name)."""
    head = _read_head(path, "video")
    if _starts_with(head, _IMAGE_MAGIC):
        return True
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def open_container(path: str, field: str) -> av.container.InputContainer:
    """``av.open`` with its failures turned into typed errors naming ``field``."""
    head = _read_head(path, field)
    if not head:
        raise NotAMediaFile(f"the {field} file is empty", field=field)
    try:
        return av.open(path, mode="r", metadata_errors="ignore")
    except av.FFmpegError as exc:
        if _starts_with(head, _CONTAINER_MAGIC) or _starts_with(head, _IMAGE_MAGIC):
            raise TruncatedMedia(
                f"the {field} file looks like a media container but cannot be read; it is probably "
                f"truncated or corrupt ({exc.strerror or exc})",
                field=field,
            ) from exc
        raise NotAMediaFile(
            f"the {field} file is not a media file FFmpeg recognises ({exc.strerror or exc})", field=field
        ) from exc


def check_decodable(stream: av.stream.Stream, field: str) -> None:
    """Raise ``UnsupportedCodec`` when no local decoder exists for the stream's codec."""
    ctx = stream.codec_context
    name = ctx.name if ctx is not None else "none"
    if ctx is None or name in ("none", "") or not ctx.is_decoder:
        tag = ""
        try:
            tag = f" (codec tag {stream.codec_tag!r})"
        except Exception:  # codec_tag is informational only
            pass
        raise UnsupportedCodec(
            f"the {field} file uses a {stream.type} codec this server cannot decode{tag}", field=field
        )


def _check_size(width: int, height: int, field: str, what: str) -> None:
    if min(width, height) < MIN_SIDE:
        raise ImageTooSmall(
            f"the {field} {what} is {width}x{height}; both sides must be at least {MIN_SIDE} pixels",
            field=field,
        )


def _check_pixels(width: int, height: int, field: str, what: str, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"the {field} {what} declares {width}x{height} pixels; at most {max_pixels} pixels a frame are accepted",
            field=field,
        )


def read_image(path: str, field: str = "video", *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a still image to RGB uint8 (H, W, 3), EXIF orientation applied."""
    try:
        with PIL.Image.open(path) as header:  # reads the header only
            size = header.size
    except PIL.Image.DecompressionBombError:  # PIL's own guard: far past ours
        raise ImageTooLarge(f"the {field} image declares too many pixels (more than {max_pixels})", field=field) from None
    except (PIL.UnidentifiedImageError, OSError):
        size = None  # OpenCV below gives the precise error, or decodes what PIL cannot
    if size is not None:
        _check_pixels(*size, field, "image", max_pixels)
    data = np.fromfile(path, dtype=np.uint8)
    try:
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error:
        bgr = None
    if bgr is None:
        raise TruncatedMedia(f"the {field} image cannot be decoded; it is probably truncated", field=field)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    _check_size(rgb.shape[1], rgb.shape[0], field, "image")
    return rgb


def rotation_of(frame: av.VideoFrame) -> int:
    """Counter-clockwise display rotation of a decoded frame, snapped to a multiple of 90 degrees."""
    try:
        angle = float(frame.rotation or 0)
    except (AttributeError, TypeError, ValueError):
        angle = 0.0
    return int(round(angle / 90.0)) % 4 * 90


def probe_video(path: str | os.PathLike[str], *, field: str = "video", max_pixels: int = MAX_PIXELS) -> MediaInfo:
    """Inspect a ``video`` input (a video file or a still image) and validate that it is usable.

    Raises NotAMediaFile, TruncatedMedia, UnsupportedCodec, NoVideoStream or ImageTooSmall (all 422 on
    ``field``).
    """
    path = os.fspath(path)
    if is_image_file(path):
        rgb = read_image(path, field, max_pixels=max_pixels)
        return MediaInfo(path, "image", rgb.shape[1], rgb.shape[0], IMAGE_FPS, None, None, 0, "image", False)
    with open_container(path, field) as container:
        if not container.streams.video:
            if container.streams.audio:
                raise NoVideoStream(
                    f"the {field} file is audio-only; it needs a video stream (or send an image)", field=field
                )
            raise NoVideoStream(f"the {field} file has no video stream", field=field)
        stream = container.streams.video[0]
        check_decodable(stream, field)
        _check_pixels(stream.codec_context.width or 0, stream.codec_context.height or 0, field, "video", max_pixels)
        first = _first_frame(container, stream, field)
        rotation = rotation_of(first)
        width, height = first.width, first.height
        if rotation in (90, 270):
            width, height = height, width
        _check_size(width, height, field, "video")
        fps = _native_fps(stream)
        duration_s = _stream_duration(stream)
        if duration_s is None and container.duration is not None:
            duration_s = container.duration / av.time_base
        frame_count = int(stream.frames) if stream.frames else None
        if frame_count is None and duration_s is not None:
            frame_count = int(round(duration_s * fps))
        return MediaInfo(
            path, "video", width, height, fps, frame_count, duration_s, rotation,
            stream.codec_context.name, bool(container.streams.audio),
        )


def _first_frame(container: av.container.InputContainer, stream: av.stream.Stream, field: str) -> av.VideoFrame:
    try:
        for frame in container.decode(stream):
            return frame
    except av.FFmpegError as exc:
        raise TruncatedMedia(
            f"the video stream of the {field} file cannot be decoded; the file is probably truncated or corrupt "
            f"({exc.strerror or exc})",
            field=field,
        ) from exc
    raise TruncatedMedia(f"the {field} video stream holds no decodable frame (truncated file?)", field=field)


def _stream_duration(stream: av.stream.Stream) -> float | None:
    """The stream's own duration: from its header, or Matroska's per-stream DURATION tag (hh:mm:ss.frac)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if tag:
        try:
            h, m, sec = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(sec)
        except ValueError:
            return None
    return None


STANDARD_FPS = tuple(
    Fraction(n, d)
    for n, d in ((24000, 1001), (24, 1), (25, 1), (30000, 1001), (30, 1), (48, 1), (50, 1), (60000, 1001), (60, 1),
                 (90, 1), (100, 1), (120000, 1001), (120, 1))
)
FPS_SNAP = 0.005
"""Relative distance within which a measured (average) frame rate is snapped to a standard one."""


def snap_fps(fps: Fraction) -> Fraction:
    """A variable-frame-rate average such as 29.96 becomes 30000/1001; other rates keep 3 decimals."""
    nearest = min(STANDARD_FPS, key=lambda std: abs(fps - std))
    if abs(fps - nearest) <= FPS_SNAP * nearest:
        return nearest
    return Fraction(round(fps * 1000), 1000)


def _native_fps(stream: av.stream.Stream) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            fps = Fraction(rate)
            if 0 < fps <= 1000:
                return snap_fps(fps)
    return IMAGE_FPS


def _even(value: float) -> int:
    """Nearest even integer not below 2 (H.264 yuv420p needs even sides)."""
    return max(2, int(round(value / 2.0)) * 2)


def _resolve_size(requested: int, native: int, field: str) -> int:
    if requested == 0:
        raise InvalidInput(f"{field} must be -k (native/k) or a positive size, not 0", field=field)
    value = native / -requested if requested < 0 else float(requested)
    size = _even(value)
    if size != value:
        log.info("%s %s rounded to the even size %d for H.264", field, value, size)
    return size


def resolve_output_spec(
    info: MediaInfo, *, frame_rate: int = -1, height: int = -1, width: int = -1, num_frames: int = 100
) -> OutputSpec:
    """Apply the schema's rules: -1 native, -k native/k, a positive value exact; sizes made even.

    ``frame_rate`` -1 on an image means 25 fps. Raises InvalidInput naming the field for 0 or out-of-range
    values.
    """
    if frame_rate == 0 or frame_rate > MAX_FPS:
        raise InvalidInput(f"frame_rate must be -1, -k or 1..{MAX_FPS}, got {frame_rate}", field="frame_rate")
    if num_frames < 1:
        raise InvalidInput(f"num_frames must be at least 1, got {num_frames}", field="num_frames")
    if frame_rate < 0 and info.kind == "video":
        _check_native_rate(info)
    fps = info.fps / -frame_rate if frame_rate < 0 else Fraction(frame_rate)
    if fps > MAX_FPS:
        log.info("native frame rate %s fps is above %d: output at %d fps", float(fps), MAX_FPS, MAX_FPS)
        fps = Fraction(MAX_FPS)
    out = OutputSpec(
        fps=fps,
        width=_resolve_size(width, info.width, "width"),
        height=_resolve_size(height, info.height, "height"),
        num_frames=num_frames,
    )
    log.info(
        "output %dx%d at %s fps (native %dx%d at %s fps), up to %d frames",
        out.width, out.height, float(out.fps), info.width, info.height, float(info.fps), num_frames,
    )
    return out


def _check_native_rate(info: MediaInfo) -> None:
    """Refuse a native rate below MIN_FPS: the declared one, or the real frame count over the duration."""
    rate = float(info.fps)
    if info.frame_count and info.duration_s:
        rate = min(rate, info.frame_count / info.duration_s)
    if rate < MIN_FPS:
        span = f"{info.frame_count} frames over {info.duration_s:.0f} s" if info.duration_s else f"{rate:.3g} fps"
        raise ImplausibleFrameRate(
            f"the video's timestamps spread {span} ({rate:.3g} fps); at least {MIN_FPS} fps is needed at its "
            f"native rate (or set frame_rate)",
            field="video",
        )


def expected_frame_count(info: MediaInfo, spec: OutputSpec) -> int:
    """Estimate of T0 before decoding (exact for an image; from the container's duration for a video)."""
    if info.kind == "image" or info.duration_s is None:
        return spec.num_frames
    return max(1, min(spec.num_frames, int(np.floor(info.duration_s * spec.fps + 1e-6))))
