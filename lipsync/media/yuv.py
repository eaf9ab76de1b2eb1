"""Frames kept as decoded (8-bit 4:2:0 planes) on their way to the encoder, and the few regions converted.

Converting every 1080x1920 frame to RGB after decoding and back to YUV before H.264 costs more CPU than the
decode itself (about 2 + 10 ms a frame, and x264 fed RGB-converted frames spends another ~9 ms; see
docs/performance.md). Paste-back only changes the mouth, so pass 2's paste side keeps the decoder's planes:
an ``I420`` frame is one uint8 array (H * 3 / 2, W) holding Y (H x W), then U and V (H/2 x W/2 each), laid
out flat as FFmpeg's ``yuv420p`` (``av.VideoFrame.to_ndarray`` / ``from_ndarray``). Only the (small) generated
crop is converted, to Y'CbCr, and warped onto the planes (``lipsync.media.paste.paste_face_i420``); the rest of the
frame reaches the encoder exactly as it was decoded, tagged with the source's own matrix and range
(``Colour``), so players show it as FFmpeg decoded it. The matrices are the ITU formulas FFmpeg's swscale
uses for the crop side's RGB decode, so both sides agree on colour; swscale itself is not called per region,
its set-up costs ~4 ms a call.
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import cv2
import numpy as np

SPC_BT709 = 1
"""AVCOL_SPC_BT709 (also AVCOL_PRI_ / AVCOL_TRC_BT709)."""
SPC_UNSPECIFIED = 2
SPC_BT470BG = 5
SPC_SMPTE170M = 6
"""AVCOL_SPC_SMPTE170M: the BT.601 matrix FFmpeg assumes for untagged video."""
RANGE_MPEG, RANGE_JPEG = 1, 2


@dataclass(frozen=True)
class Colour:
    """How a stream's Y'CbCr maps to RGB: the matrix (``ITU601`` or ``ITU709``) and the range."""

    matrix: str = "ITU709"
    full_range: bool = False

    @property
    def range_name(self) -> str:
        return "JPEG" if self.full_range else "MPEG"

    @property
    def colorspace_tag(self) -> int:
        return SPC_BT709 if self.matrix == "ITU709" else SPC_SMPTE170M

    @property
    def range_tag(self) -> int:
        return RANGE_JPEG if self.full_range else RANGE_MPEG


ENCODE_COLOUR = Colour()
"""RGB frames are encoded as BT.709 limited range: what players assume for HD."""

_MATRICES = {SPC_BT709: "ITU709", SPC_UNSPECIFIED: "ITU601", SPC_BT470BG: "ITU601", SPC_SMPTE170M: "ITU601"}
_PASSTHROUGH_FORMATS = {"yuv420p": False, "yuvj420p": True}  # format -> full range by the format itself


def frame_colour(frame: av.VideoFrame) -> Colour | None:
    """The colour of a decoded frame whose planes can go to the encoder as they are, else None (10-bit,
    4:2:2/4:4:4, BT.2020 ...: those are converted through RGB)."""
    full = _PASSTHROUGH_FORMATS.get(frame.format.name)
    matrix = _MATRICES.get(int(frame.colorspace))
    if full is None or matrix is None:
        return None
    return Colour(matrix, full or int(frame.color_range) == RANGE_JPEG)


def frame_height(i420: np.ndarray) -> int:
    """Picture height of an I420 frame array (H * 3 / 2, W)."""
    return i420.shape[-2] * 2 // 3


def planes(i420: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views (Y, U, V) of one I420 frame array: (H, W), (H/2, W/2), (H/2, W/2); writable when it is."""
    h, w = frame_height(i420), i420.shape[-1]
    flat = i420.reshape(-1)
    y = flat[: h * w].reshape(h, w)
    u = flat[h * w : h * w + h * w // 4].reshape(h // 2, w // 2)
    v = flat[h * w + h * w // 4 :].reshape(h // 2, w // 2)
    return y, u, v


def rgb_to_yuv_matrix(colour: Colour) -> np.ndarray:
    """3x4 matrix M with [Y, Cb, Cr] = M @ [R, G, B, 1] (8-bit codes; ITU-R BT.601 / BT.709, limited or full
    range: the standards' formulas, which swscale's fixed point follows to within a code value)."""
    kr, kb = (0.2126, 0.0722) if colour.matrix == "ITU709" else (0.299, 0.114)
    kg = 1.0 - kr - kb
    luma = np.array([kr, kg, kb])
    cb = (np.array([0.0, 0.0, 1.0]) - luma) / (2 * (1 - kb))
    cr = (np.array([1.0, 0.0, 0.0]) - luma) / (2 * (1 - kr))
    ys, cs, y0 = (1.0, 1.0, 0.0) if colour.full_range else (219 / 255, 224 / 255, 16.0)
    return np.array([[*(ys * luma), y0], [*(cs * cb), 128.0], [*(cs * cr), 128.0]], np.float64)


def yuv_to_rgb_matrix(colour: Colour) -> np.ndarray:
    """The inverse of ``rgb_to_yuv_matrix``: [R, G, B] = M @ [Y, Cb, Cr, 1]."""
    m = rgb_to_yuv_matrix(colour)
    inv = np.linalg.inv(m[:, :3])
    return np.hstack([inv, -(inv @ m[:, 3])[:, None]])


def i420_to_rgb(i420: np.ndarray, colour: Colour) -> np.ndarray:
    """(H, W, 3) RGB of one I420 array: chroma upsampled bilinearly, then one ``cv2.transform`` (checks and
    tools; within a code value or two of swscale, whose chroma filter differs at edges)."""
    y, u, v = planes(i420)
    h, w = y.shape
    yuv = cv2.merge([y, cv2.resize(u, (w, h), interpolation=cv2.INTER_LINEAR),
                     cv2.resize(v, (w, h), interpolation=cv2.INTER_LINEAR)])
    return cv2.transform(yuv, yuv_to_rgb_matrix(colour))


def rgb_to_i420(rgb: np.ndarray, colour: Colour) -> np.ndarray:
    """(H * 3 / 2, W) I420 of an (H, W, 3) RGB array of even size, in ``colour``: one ``cv2.transform``,
    then each 2x2 block's chroma averaged."""
    h, w = rgb.shape[:2]
    yuv = cv2.transform(np.ascontiguousarray(rgb, dtype=np.uint8), rgb_to_yuv_matrix(colour))
    out = np.empty((h * 3 // 2, w), np.uint8)
    oy, ou, ov = planes(out)
    oy[...] = yuv[..., 0]
    ou[...] = cv2.resize(np.ascontiguousarray(yuv[..., 1]), (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    ov[...] = cv2.resize(np.ascontiguousarray(yuv[..., 2]), (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    return out


def even_box(x0: int, y0: int, x1: int, y1: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """``box`` grown to even corners (4:2:0 chroma covers 2x2 pixels) and clipped to the frame."""
    x0, y0 = max(0, x0 - x0 % 2), max(0, y0 - y0 % 2)
    x1, y1 = min(width, x1 + x1 % 2), min(height, y1 + y1 % 2)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None
