"""MuseTalk's paste-back mask without face parsing: the lower face, from the 68 landmarks, feathered.

The reference's "jaw" mode (musetalk/utils/blending.py + face_parsing) keeps, of its BiSeNet face-parsing mask
(skin and lips, the nose taken out, dilated downwards past the jaw line), the part below the box's middle row
(the nose point 29, by the box rule), then blurs it with a kernel of ~5% of the box. We draw the same region from
the landmarks: the hull of the jaw contour and the nose, grown a little (the dilation past the jaw), cut at the
crop's middle row, blurred, and brought to zero before the crop's edges so the seam is never the square's edge.
"""

from __future__ import annotations

import cv2
import numpy as np

JAW = list(range(0, 17))
NOSE = list(range(27, 36))

GROW = 0.06
"""The hull is grown by this fraction of its size (the reference dilates its parsing mask past the jaw)."""
FEATHER = 0.02
"""Gaussian sigma, fraction of the crop side."""


def _edge_ramp(size: int, width: float) -> np.ndarray:
    """(size, size) 0 on the outermost pixels, rising linearly to 1 at ``width`` pixels from every edge."""
    d = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32)
    ramp = np.clip(d / max(width, 1.0), 0.0, 1.0)
    return np.minimum(ramp[:, None], ramp[None, :])


def lower_face_mask(landmarks: np.ndarray, size: int, *, top: float = 0.5) -> np.ndarray:
    """(size, size) float32 in [0, 1] for one crop's (68, 2) crop-coordinate landmarks; zeros if any is NaN."""
    if not np.isfinite(landmarks).all():
        return np.zeros((size, size), np.float32)
    pts = landmarks[JAW + NOSE].astype(np.float64)
    centre = pts.mean(0)
    pts = centre + (pts - centre) * (1.0 + GROW)
    hull = cv2.convexHull(np.round(pts * 4).astype(np.int32))
    mask = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(mask, hull, 255, lineType=cv2.LINE_AA, shift=2)
    mask[: int(round(top * size))] = 0
    sigma = FEATHER * size
    soft = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_CONSTANT)
    return np.clip(soft * _edge_ramp(size, 3 * sigma), 0.0, 1.0)


def lower_face_masks(landmarks: np.ndarray, size: int) -> np.ndarray:
    """(n, size, size) float32 for (n, 68, 2) landmarks."""
    out = np.zeros((len(landmarks), size, size), np.float32)
    for k, pts in enumerate(landmarks):
        out[k] = lower_face_mask(pts, size)
    return out
