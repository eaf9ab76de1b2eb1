"""Square face crops at the model's working resolution, from the alignment a FaceTrack holds."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from lipsync.media.faces import FaceTrack


def crop_face(frame: np.ndarray, affine: np.ndarray, size: int) -> np.ndarray:
    """Warp one frame into a ``size`` x ``size`` crop (bicubic; edges replicated outside the frame)."""
    return cv2.warpAffine(
        np.ascontiguousarray(frame), affine, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
    )


def crop_faces(
    frames: np.ndarray, track: FaceTrack, indices: Sequence[int], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Crops of ``frames`` (n, H, W, 3), which are the track's frames ``indices`` (n of them).

    Returns (crops (n, size, size, 3) uint8, present (n,) bool). Frames without a face get a zero crop and
    ``present`` False: they pass through paste-back unchanged.
    """
    if len(indices) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(indices)} indices")
    crops = np.zeros((len(frames), size, size, 3), np.uint8)
    present = np.zeros(len(frames), dtype=bool)
    for k, (frame, i) in enumerate(zip(frames, indices)):
        if i >= 0 and track.present[i]:
            crops[k] = crop_face(frame, track.affine(i, size), size)
            present[k] = True
    return crops, present


def landmarks_in_crop(track: FaceTrack, index: int, size: int) -> np.ndarray:
    """(68, 2) float32 landmarks of frame ``index`` in the coordinates of its ``size`` crop."""
    m = track.affine(index, size)
    pts = track.landmarks[index].astype(np.float64)
    return (pts @ m[:, :2].T + m[:, 2]).astype(np.float32)
