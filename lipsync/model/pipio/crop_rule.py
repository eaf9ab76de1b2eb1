"""pipio's crop rule: the head square of ``lipsync.media.faces`` (the track's smoothed alignment) at the working size,
the landmark mouth mask the model repaints, and the paste-back masks (the mouth mask; the feathered whole-face
mask on frames the model synthesises whole: additions, bridges, every frame of a still)."""

from __future__ import annotations

import numpy as np

from lipsync.media.crop import crop_face
from lipsync.media.faces import FaceTrack, affine_for
from lipsync.media.masks import face_blend_mask, mouth_mask


def face_affines(track: FaceTrack, size: int) -> np.ndarray:
    """(T, 2, 3) frame → crop affines; NaN where the track has no face."""
    out = np.full((track.num_frames, 2, 3), np.nan)
    for i in np.flatnonzero(track.present):
        out[i] = affine_for(track.alignment[i], size)
    return out


def crop_frames(frames: np.ndarray, affines: np.ndarray, size: int) -> np.ndarray:
    """(N, size, size, 3) crops; black where the affine is NaN (no face)."""
    crops = np.zeros((len(frames), size, size, 3), np.uint8)
    for k, (frame, m) in enumerate(zip(frames, affines)):
        if np.isfinite(m).all():
            crops[k] = crop_face(frame, m, size)
    return crops


def model_masks(landmarks: np.ndarray, size: int) -> np.ndarray:
    """(N, size, size) float32 mouth masks the model repaints; zero where there are no landmarks."""
    masks = np.zeros((len(landmarks), size, size), np.float32)
    for k, pts in enumerate(landmarks):
        if np.isfinite(pts).all():
            masks[k] = mouth_mask(pts, size)
    return masks


def blend_masks(landmarks: np.ndarray, synthesised: np.ndarray, size: int) -> np.ndarray:
    """Paste-back masks: the mouth mask, or the feathered whole-face mask where ``synthesised``."""
    masks = model_masks(landmarks, size)
    for k in np.flatnonzero(synthesised):
        if np.isfinite(landmarks[k]).all():
            masks[k] = face_blend_mask(landmarks[k], size)
    return masks


class LandmarkMasks:
    """The model's mouth masks of a timeline, made from its landmarks for the frames asked (``masks[idx]``),
    so no (T, S, S) float array is ever held; all zero for a still (every frame is synthesised)."""

    def __init__(self, landmarks: np.ndarray, size: int, *, still: bool):
        self.landmarks, self.size, self.still = landmarks, size, still
        self.shape = (len(landmarks), size, size)

    def __getitem__(self, index) -> np.ndarray:
        picked = self.landmarks[index]
        if self.still:
            return np.zeros((len(picked), *self.shape[1:]), np.float32)
        return model_masks(picked, self.size)
