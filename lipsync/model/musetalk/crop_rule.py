"""MuseTalk's crop rule: the face box (frame → 256² crop affines) and the paste-back mask.

## The face box, from our 68 dlib landmarks

The published rule (musetalk/utils/preprocessing.py ``get_landmark_and_bbox`` + scripts/inference.py), with
landmarks truncated to integer pixels as the reference does:

- x from the landmarks' min x to their max x; the bottom ``y2`` = the largest landmark y (the chin);
- the top ``y1 = max(0, y29 - (y2 - y29))`` with ``y29`` the nose-ridge point 29 moved by ``bbox_shift``: the
  box is twice the nose-to-chin distance tall, so its middle row sits on the nose;
- v1.5 adds ``extra_margin`` (10 px) below the chin, clamped to the frame;
- the box is cut out and resized to 256² with Lanczos (anisotropically).

Our additions: the box corners are smoothed over time (a centred moving average within each run of tracked
frames; the reference recomputes the box every frame and its crops jitter), and a box that reaches outside the
frame is clamped to it (the reference falls back to its face detector's box when x1 < 0).

## The paste-back mask, without face parsing: the published "jaw" region from the 68 landmarks

The reference's "jaw" mode (musetalk/utils/blending.py ``get_image`` + face_parsing ``mode="jaw"``) keeps, of its
BiSeNet face-parsing mask on a 1.5x square around the box (skin grown downwards past the jaw line, the cheeks
outside a centre band eroded sideways, the lips added, the nose removed), the part inside the box and below the
square's middle row (the box's middle: the nose point 29, by the box rule), then blurs it with a kernel of 5% of
the square. ``lower_face_mask`` draws that region from the landmarks (see there); the paste puts the frame's own
pixels back outside the crop, as the published paste of the 1.5x square does outside the box.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CROP_SIZE = 256
NOSE_RIDGE = 29


@dataclass(frozen=True)
class BoxRule:
    bbox_shift: int = 0
    """Pixels added to the nose point's y before the top is computed (v1.5: always 0)."""
    extra_margin: int = 10
    """Pixels added below the chin (v1.5: 10; v1.0: 0)."""
    smooth_window: int = 5
    """Frames in the centred moving average of the box corners (1 = none)."""


def landmark_boxes(landmarks: np.ndarray, frame_size: tuple[int, int], rule: BoxRule) -> np.ndarray:
    """(T, 68, 2) frame landmarks (NaN rows where absent) → (T, 4) float64 [x1, y1, x2, y2], NaN where absent,
    before smoothing and rounding."""
    height = frame_size[1]
    boxes = np.full((len(landmarks), 4), np.nan)
    ok = np.isfinite(landmarks).all(axis=(1, 2))
    lm = np.trunc(landmarks[ok]).astype(np.float64)  # the reference's astype(np.int32)
    y2 = lm[:, :, 1].max(1)
    mid = lm[:, NOSE_RIDGE, 1] + rule.bbox_shift
    y1 = np.maximum(0.0, mid - (y2 - mid))
    boxes[ok] = np.stack([lm[:, :, 0].min(1), y1, lm[:, :, 0].max(1), np.minimum(y2 + rule.extra_margin, height)], 1)
    return boxes


def smooth_boxes(boxes: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over each run of finite rows (a run's ends average over fewer frames)."""
    out = boxes.copy()
    if window <= 1:
        return out
    ok = np.isfinite(boxes).all(1)
    half = window // 2
    idx = np.flatnonzero(ok)
    runs = np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1) if idx.size else []
    for run in runs:
        values = boxes[run]
        csum = np.concatenate([np.zeros((1, 4)), np.cumsum(values, 0)])
        lo = np.clip(np.arange(len(run)) - half, 0, len(run))
        hi = np.clip(np.arange(len(run)) + half + 1, 0, len(run))
        out[run] = (csum[hi] - csum[lo]) / (hi - lo)[:, None]
    return out


def integer_boxes(boxes: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """Round to whole pixels and clamp to the frame; boxes with no area become NaN."""
    width, height = frame_size
    out = np.full_like(boxes, np.nan)
    ok = np.isfinite(boxes).all(1)
    b = np.round(boxes[ok])
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, width)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, height)
    good = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    rows = np.flatnonzero(ok)[good]
    out[rows] = b[good]
    return out


def box_affine(box: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """(2, 3) frame → crop affine equal to ``cv2.resize`` of ``frame[y1:y2, x1:x2]`` to size² (pixel centres:
    crop x' samples frame x = (x' + 0.5) / s - 0.5 + x1)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    sx, sy = size / (x2 - x1), size / (y2 - y1)
    return np.array([[sx, 0.0, (0.5 - x1) * sx - 0.5], [0.0, sy, (0.5 - y1) * sy - 0.5]])


def affine_box(affine: np.ndarray, size: int = CROP_SIZE) -> tuple[int, int, int, int] | None:
    """The integer box an axis-aligned :func:`box_affine` was made from, or None for any other affine."""
    if not np.isfinite(affine).all() or affine[0, 1] != 0 or affine[1, 0] != 0:
        return None
    sx, sy = affine[0, 0], affine[1, 1]
    x1, y1 = 0.5 - (affine[0, 2] + 0.5) / sx, 0.5 - (affine[1, 2] + 0.5) / sy
    x2, y2 = x1 + size / sx, y1 + size / sy
    box = np.array([x1, y1, x2, y2])
    rounded = np.round(box)
    return tuple(int(v) for v in rounded) if np.allclose(box, rounded, atol=1e-6) else None


def box_affines(landmarks: np.ndarray, frame_size: tuple[int, int], rule: BoxRule,
                size: int = CROP_SIZE) -> np.ndarray:
    """(T, 2, 3) affines of the smoothed integer boxes; NaN rows where no face (or no usable box)."""
    boxes = integer_boxes(smooth_boxes(landmark_boxes(landmarks, frame_size, rule), rule.smooth_window), frame_size)
    out = np.full((len(boxes), 2, 3), np.nan)
    for i in np.flatnonzero(np.isfinite(boxes).all(1)):
        out[i] = box_affine(boxes[i], size)
    return out


def crop_boxes(frames: np.ndarray, affines: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """(n, size, size, 3) uint8: box cut + Lanczos resize (the reference's ``cv2.resize(..., INTER_LANCZOS4)``)
    for box affines; any other affine is warped with Lanczos; NaN affine → zeros."""
    crops = np.zeros((len(frames), size, size, 3), np.uint8)
    for k, (frame, m) in enumerate(zip(frames, affines)):
        if not np.isfinite(m).all():
            continue
        box = affine_box(m, size)
        if box is not None:
            x1, y1, x2, y2 = box
            crops[k] = cv2.resize(np.ascontiguousarray(frame[y1:y2, x1:x2]), (size, size),
                                  interpolation=cv2.INTER_LANCZOS4)
        else:
            crops[k] = cv2.warpAffine(np.ascontiguousarray(frame), m, (size, size), flags=cv2.INTER_LANCZOS4,
                                      borderMode=cv2.BORDER_REPLICATE)
    return crops


# ---------------------------------------------------------------------------------------- paste-back mask
JAW = list(range(0, 17))
NOSE = list(range(27, 36))
MOUTH = list(range(48, 60))

PARSING_SIDE = 512
"""The published face parsing runs on the 1.5x box square resized to 512²; its kernels are sized there."""
EXPAND = 1.5
"""``get_crop_box(box, expand=1.5)``: the square the parsing and the blur work on, 1.5x the box's larger side."""
CHEEK_HALF_WIDTH = 90
"""``--left_cheek_width`` / ``--right_cheek_width`` (90 in scripts/inference.py): outside the centre band of
+-90 parsing pixels the skin is eroded sideways (the cheeks are kept from the source), inside it not."""
CHEEK_EROSION = 2 * (35 // 2)
"""Parsing pixels the cheeks lose on each side: two erosions with a 35 x 3 ellipse."""
JAW_DILATION = 6
"""Parsing pixels the skin grows downwards past the jaw line (the cone kernel: rows 10-32, anchor 16)."""
BLUR_FRACTION = 0.05
"""The blur kernel: ``int(0.05 * side // 2 * 2) + 1`` pixels of the 1.5x square (sigma from OpenCV's rule)."""


def _parsing_to_crop(pixels: float, size: int) -> float:
    """Parsing pixels -> crop pixels, for a square box (the crop's two axes differ by the box's aspect)."""
    return pixels / PARSING_SIDE * EXPAND * size


def blur_kernel(size: int) -> int:
    """The published blur kernel in crop pixels: ``int(0.05 * side // 2 * 2) + 1`` of the 1.5x square."""
    return int(BLUR_FRACTION * EXPAND * size // 2 * 2) + 1


def lower_face_mask(landmarks: np.ndarray, size: int) -> np.ndarray:
    """(size, size) float32 in [0, 1] for one crop's (68, 2) crop-coordinate landmarks; zeros if any is NaN.

    The published "jaw" blend region (face parsing: skin grown down past the jaw line, the cheeks eroded
    sideways, the lips added, the nose removed; kept below the box's middle row; blurred), drawn from the
    landmarks: the face inside the jaw contour; in the centre band the jaw region also slides down to the box's
    bottom (the chin and the ``extra_margin`` below it, which the box rule puts under the chin), outside it the
    cheeks are eroded by the published amount; the lips added, the nose (27-35) removed; rows below the middle;
    blurred with the published kernel (OpenCV's sigma for it). Lengths in parsing pixels are taken at a square box
    (the crop's aspect is the box's: up to a few percent apart)."""
    if not np.isfinite(landmarks).all():
        return np.zeros((size, size), np.float32)
    sub = 4  # sub-pixel polygon vertices (cv2 ``shift``)

    def fill(points: np.ndarray, mask: np.ndarray) -> None:
        hull = cv2.convexHull(np.round(points * sub).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 255, lineType=cv2.LINE_8, shift=2)

    pts = landmarks.astype(np.float64)
    face = np.zeros((size, size), np.uint8)
    fill(pts[JAW], face)
    grow = max(1, int(round(_parsing_to_crop(JAW_DILATION, size))))
    face = cv2.dilate(face, np.ones((grow + 1, 1), np.uint8), anchor=(0, 0))  # downwards only
    centre_x = (size - 1) / 2
    band = np.abs(np.arange(size) - centre_x) < _parsing_to_crop(CHEEK_HALF_WIDTH, size)
    # the chin and the margin below it: within the centre band, the jaw region slid down to the box's bottom
    drop = int(np.ceil(size - pts[:, 1].max()))
    if drop > 0:
        slid = np.zeros_like(face)
        slid[drop:] = face[:-drop]
        face[:, band] = np.maximum(face[:, band], slid[:, band])
    erode = int(round(_parsing_to_crop(CHEEK_EROSION, size)))
    if erode > 0:
        cheeks = cv2.erode(face, np.ones((1, 2 * erode + 1), np.uint8))
        face[:, ~band] = cheeks[:, ~band]
    fill(pts[MOUTH], face)
    nose = np.zeros_like(face)
    fill(pts[NOSE], nose)
    face[nose > 0] = 0
    face[: size // 2] = 0  # above the box's middle row (the nose ridge point 29, by the box rule)
    k = blur_kernel(size)
    soft = cv2.GaussianBlur(face, (k, k), 0, borderType=cv2.BORDER_CONSTANT)  # uint8, as published
    return soft.astype(np.float32) / 255.0


def lower_face_masks(landmarks: np.ndarray, size: int) -> np.ndarray:
    """(n, size, size) float32 for (n, 68, 2) landmarks."""
    out = np.zeros((len(landmarks), size, size), np.float32)
    for k, pts in enumerate(landmarks):
        out[k] = lower_face_mask(pts, size)
    return out
