"""The face crop SyncNet's published evaluation feeds the network (joonson/syncnet_python ``run_pipeline``
``crop_video``), on our face track.

The reference detects faces with S3FD; we take the box from the track's 68 landmarks (jaw to chin across,
brows lifted by a quarter of the face height on top, about where S3FD's box sits) — an approximation, said
in docs/evaluation.md. Then as there: half-size s = max(box w, h) / 2 and centre (x, y), each median-filtered
over 13 frames; the crop is rows y - s .. y + 1.8 s, columns x - 1.4 s .. x + 1.4 s (crop_scale 0.4) of the
frame padded with grey 110, resized to 224 x 224 (bilinear).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import cv2
import numpy as np
from scipy import signal

from lipsync.media.faces import FaceTrack

CROP_SCALE = 0.4
SMOOTH_KERNEL = 13
PAD_VALUE = 110
BROWS = slice(17, 27)


def landmark_boxes(landmarks: np.ndarray) -> np.ndarray:
    """(T, 68, 2) -> (T, 4) x0, y0, x1, y1: the landmarks' extent, its top lifted by 0.25 of its height."""
    x0, x1 = landmarks[..., 0].min(-1), landmarks[..., 0].max(-1)
    chin = landmarks[..., 1].max(-1)
    brow = landmarks[..., BROWS, 1].min(-1)
    top = brow - 0.25 * (chin - brow)
    return np.stack([x0, top, x1, chin], -1)


def longest_face_run(track: FaceTrack) -> tuple[int, int]:
    """[start, end) of the longest run of consecutive frames with a tracked face ((0, 0) if none)."""
    best, start = (0, 0), None
    for i, present in enumerate([*track.present.tolist(), False]):
        if present and start is None:
            start = i
        elif not present and start is not None:
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    return best


def crop_params(track: FaceTrack, start: int, end: int) -> np.ndarray:
    """(end - start, 3) smoothed [centre x, centre y, half-size s] per frame of the run."""
    boxes = landmark_boxes(track.landmarks[start:end].astype(np.float64))
    s = np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2
    y = (boxes[:, 1] + boxes[:, 3]) / 2
    x = (boxes[:, 0] + boxes[:, 2]) / 2
    return np.stack([signal.medfilt(v, kernel_size=SMOOTH_KERNEL) for v in (x, y, s)], 1)


def crop_frame(frame: np.ndarray, cx: float, cy: float, s: float, size: int) -> np.ndarray:
    """One crop, indices truncated as the reference's ``int()`` on the padded frame."""
    pad = int(s * (1 + 2 * CROP_SCALE))
    my, mx = cy + pad, cx + pad
    r0, r1 = int(my - s) - pad, int(my + s * (1 + 2 * CROP_SCALE)) - pad
    c0, c1 = int(mx - s * (1 + CROP_SCALE)) - pad, int(mx + s * (1 + CROP_SCALE)) - pad
    h, w = frame.shape[:2]
    out = np.full((r1 - r0, c1 - c0, 3), PAD_VALUE, np.uint8)
    fr0, fr1, fc0, fc1 = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
    if fr1 > fr0 and fc1 > fc0:
        out[fr0 - r0 : fr1 - r0, fc0 - c0 : fc1 - c0] = frame[fr0:fr1, fc0:fc1]
    return cv2.resize(out, (size, size))


def syncnet_crops(
    chunks: Iterable[np.ndarray], track: FaceTrack, start: int, end: int, size: int = 224
) -> Iterator[np.ndarray]:
    """Crops (size, size, 3) of frames start..end-1 out of a fresh decode of the track's frames."""
    params = crop_params(track, start, end)
    base = 0
    for chunk in chunks:
        for k in range(len(chunk)):
            i = base + k
            if start <= i < end:
                yield crop_frame(chunk[k], *params[i - start], size)
        base += len(chunk)
        if base >= end:
            return
