"""InfiniteTalk's "crop": the whole frame, resized to the resolution bucket closest to its aspect ratio (the
authors' bucket rule). The crop is not square; the frame → crop affine is one scale per axis for every frame; the
paste-back mask is everywhere one, so the generated picture covers the whole output frame.

Deviation, on purpose: the authors cover-resize and centre-crop (``resize_and_centercrop``), which cuts a band off
(16:9 1920x1080 → the 2:1 896x448 bucket loses 11 % of the height). Pasted back, that band would stay the source
frame next to regenerated pixels: a seam across the body, and in an addition a frozen strip. We scale each axis
to the bucket instead (PIL bilinear, as their resize): during generation the picture's aspect ratio is off by
the bucket table's step (at most 12.5 %, 16:9 at 480p), and the paste-back restores it.
"""

from __future__ import annotations

import numpy as np

from lipsync.model.infinitetalk.config import bucket


def size(height: int, width: int, table: str) -> tuple[int, int]:
    """(bucket h, bucket w) for a frame of ``height`` x ``width``."""
    return bucket(height, width, table)


def affine(height: int, width: int, table: str) -> np.ndarray:
    """(2, 3) frame pixel → crop pixel (pixel centres, as a resize maps them)."""
    bh, bw = size(height, width, table)
    sx, sy = bw / width, bh / height
    return np.array([[sx, 0.0, 0.5 * (sx - 1)], [0.0, sy, 0.5 * (sy - 1)]], np.float64)


def crop_frame(frame: np.ndarray, table: str) -> np.ndarray:
    """(H, W, 3) uint8 → (bucket h, bucket w, 3) uint8 (PIL bilinear, the authors' resampling)."""
    from PIL import Image

    bh, bw = size(*frame.shape[:2], table)
    return np.asarray(Image.fromarray(frame).resize((bw, bh), resample=Image.BILINEAR)).copy()
