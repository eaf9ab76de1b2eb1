"""Soft masks in crop coordinates: the mouth region the model repaints, and the blend mask for paste-back."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from lipsync.media.crop import landmarks_in_crop
from lipsync.media.faces import FaceTrack

# iBUG 68-point groups
JAW_LOWER = list(range(2, 15))
NOSE_BOTTOM = list(range(30, 36))
MOUTH = list(range(48, 68))
BROWS = list(range(17, 27))


MASK_RENDER_SIZE = 128
"""Soft masks are drawn and blurred at most this size, then resized: they hold no fine detail, and a large
Gaussian on a 512 px crop would cost more than the rest of the paste-back."""


def _hull_mask(points: np.ndarray, size: int, grow: float) -> np.ndarray:
    centre = points.mean(0)
    pts = centre + (points - centre) * (1.0 + grow)
    hull = cv2.convexHull(np.round(pts * 4).astype(np.int32))  # 2 bits of sub-pixel precision
    mask = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(mask, hull, 255, lineType=cv2.LINE_AA, shift=2)
    return mask.astype(np.float32) / 255.0


def _feather(mask: np.ndarray, sigma_px: float) -> np.ndarray:
    if sigma_px <= 0:
        return mask
    return cv2.GaussianBlur(mask, (0, 0), sigmaX=sigma_px, borderType=cv2.BORDER_CONSTANT)


def _render_scale(size: int) -> float:
    return min(1.0, MASK_RENDER_SIZE / size)


def _upscale(mask: np.ndarray, size: int) -> np.ndarray:
    if mask.shape[0] == size:
        return mask
    return cv2.resize(mask, (size, size), interpolation=cv2.INTER_LINEAR)


def mouth_mask(landmarks: np.ndarray, size: int, *, dilate: float = 0.1, feather: float = 0.02) -> np.ndarray:
    """(size, size) float32 in [0, 1]: the lower face from below the nose to the chin, cheek to cheek.

    The convex hull of the lower jaw, the nose bottom and the lips (crop-coordinate ``landmarks``, (68, 2)),
    grown by ``dilate`` (fraction of its size, a generous mask) and blurred with sigma ``feather``·size.
    """
    k = _render_scale(size)
    small = max(1, round(size * k))
    pts = landmarks[JAW_LOWER + NOSE_BOTTOM + MOUTH].astype(np.float64) * (small / size)
    mask = _feather(_hull_mask(pts, small, dilate), feather * small)
    return np.clip(_upscale(mask, size), 0.0, 1.0)


def lower_face_mask(size: int, *, top: float = 0.5, feather: float = 0.02) -> np.ndarray:
    """A fixed mask of the crop's lower part (LatentSync style), for when landmarks are not wanted."""
    mask = np.zeros((size, size), np.float32)
    y0 = int(round(top * size))
    margin = int(round(0.12 * size))
    mask[y0 : size - margin, margin : size - margin] = 1.0
    return _feather(mask, feather * size)


def face_blend_mask(landmarks: np.ndarray, size: int, *, feather: float = 0.03) -> np.ndarray:
    """Paste-back mask: the whole face (jaw, brows lifted towards the forehead), eroded then feathered, so
    the seam falls on skin inside the crop and never on the crop's square edge."""
    small = max(1, round(size * _render_scale(size)))
    pts = landmarks.astype(np.float64) * (small / size)
    jaw = pts[list(range(0, 17))]
    brows = pts[BROWS]
    lift = (pts[BROWS].mean(0) - pts[MOUTH].mean(0)) * 0.3
    hull_pts = np.concatenate([jaw, brows + lift])
    mask = _hull_mask(hull_pts, small, 0.0)
    erode = max(1, int(round(feather * small)))
    mask = cv2.erode(mask, np.ones((erode, erode), np.uint8))
    return np.clip(_upscale(_feather(mask, feather * small), size), 0.0, 1.0)


def latent_mask(masks: np.ndarray, *, spatial: int = 32, temporal: int = 8) -> np.ndarray:
    """Pixel masks (T, H, W) → latent-grid masks (1 + ceil((T-1)/temporal), H/spatial, W/spatial).

    Max-pooled in space; latent frame 0 = pixel frame 0, latent frame k = max over pixel frames
    temporal·k - (temporal-1) .. temporal·k (the causal video VAE's grouping).
    """
    t, h, w = masks.shape
    if h % spatial or w % spatial:
        raise ValueError(f"mask size {h}x{w} is not a multiple of {spatial}")
    pooled = masks.reshape(t, h // spatial, spatial, w // spatial, spatial).max(axis=(2, 4))
    n_lat = 1 + -(-(t - 1) // temporal)
    out = np.zeros((n_lat, h // spatial, w // spatial), masks.dtype)
    out[0] = pooled[0]
    for k in range(1, n_lat):
        out[k] = pooled[temporal * (k - 1) + 1 : temporal * k + 1].max(axis=0)
    return out


def mouth_masks(track: FaceTrack, indices: Sequence[int], size: int, **kwargs: float) -> np.ndarray:
    """(n, size, size) float32 ``mouth_mask`` for the track's frames ``indices``; all zero where there is no
    face (index -1 or absent), so such frames are left alone by the model and by paste-back."""
    out = np.zeros((len(indices), size, size), np.float32)
    for k, i in enumerate(indices):
        if i >= 0 and track.present[i]:
            out[k] = mouth_mask(landmarks_in_crop(track, i, size), size, **kwargs)
    return out
