"""InfiniteTalk's "crop": the whole frame, cover-resized to the resolution bucket closest to its aspect ratio and
centre-cropped (the authors' ``resize_and_centercrop``: scale = max(bucket h / h, bucket w / w), size rounded up,
PIL bilinear, torchvision's centre crop). The crop is not square; the frame → crop affine is one scale and
offset for every frame; the paste-back mask is everywhere one. What the bucket cuts off (at most a band along one
side, e.g. 16:9 1920x1080 → 896x448 keeps 95 % of the width) stays the source frame's.
"""

from __future__ import annotations

import math

import numpy as np

from lipsync.model.infinitetalk.config import bucket


def geometry(height: int, width: int, table: str) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """((bucket h, bucket w), (resized h, resized w), (top, left)) for a frame of ``height`` x ``width``."""
    bh, bw = bucket(height, width, table)
    scale = max(bh / height, bw / width)
    rh, rw = math.ceil(scale * height), math.ceil(scale * width)
    top, left = int(round((rh - bh) / 2.0)), int(round((rw - bw) / 2.0))
    return (bh, bw), (rh, rw), (top, left)


def affine(height: int, width: int, table: str) -> np.ndarray:
    """(2, 3) frame pixel → crop pixel (pixel centres, as a resize maps them)."""
    _, (rh, rw), (top, left) = geometry(height, width, table)
    sx, sy = rw / width, rh / height
    return np.array([[sx, 0.0, 0.5 * (sx - 1) - left], [0.0, sy, 0.5 * (sy - 1) - top]], np.float64)


def crop_frame(frame: np.ndarray, table: str) -> np.ndarray:
    """(H, W, 3) uint8 → (bucket h, bucket w, 3) uint8, the authors' resize (PIL bilinear) and centre crop."""
    from PIL import Image

    h, w = frame.shape[:2]
    (bh, bw), (rh, rw), (top, left) = geometry(h, w, table)
    resized = np.asarray(Image.fromarray(frame).resize((rw, rh), resample=Image.BILINEAR))
    return np.ascontiguousarray(resized[top : top + bh, left : left + bw])
