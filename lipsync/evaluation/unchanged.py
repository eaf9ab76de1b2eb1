"""PSNR and SSIM of the region paste-back must leave alone: everything outside the blend mask, output
against source, frame by frame. Low figures there mean paste-back drift (a shifted, recoloured or blurred
background), not lip-sync quality.

The mask is media's paste-back masks for the source's face track (the whole-face blend mask and the mouth
mask, united), warped into the frame and dilated by 3 % of the crop side; frames without a face compare
every pixel.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np
from skimage.metrics import structural_similarity

from lipsync.media.crop import landmarks_in_crop
from lipsync.media.faces import FaceTrack
from lipsync.media.masks import face_blend_mask, mouth_mask

MASK_SIZE = 128
PSNR_CAP_DB = 100.0


@dataclass(frozen=True)
class UnchangedResult:
    psnr_db: float
    """Mean over frames of the PSNR outside the mask (capped at 100 dB for identical pixels)."""
    ssim: float
    """Mean over frames of the grey-level SSIM map averaged outside the mask."""
    frames: int
    outside_fraction: float
    """Mean share of the frame's pixels compared."""

    def summary(self) -> dict[str, float | int]:
        return {"psnr_db": self.psnr_db, "ssim": self.ssim, "frames": self.frames, "outside_fraction": self.outside_fraction}


def changed_region(track: FaceTrack, index: int, width: int, height: int) -> np.ndarray:
    """(H, W) bool: where paste-back may change frame ``index`` (empty without a face)."""
    if not track.present[index]:
        return np.zeros((height, width), bool)
    marks = landmarks_in_crop(track, index, MASK_SIZE)
    mask = np.maximum(face_blend_mask(marks, MASK_SIZE), mouth_mask(marks, MASK_SIZE))
    grow = max(1, int(round(0.03 * MASK_SIZE)))
    mask = cv2.dilate((mask > 0).astype(np.uint8), np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
    inverse = cv2.invertAffineTransform(track.affine(index, MASK_SIZE))
    return cv2.warpAffine(mask, inverse, (width, height), flags=cv2.INTER_NEAREST, borderValue=0) > 0


def frame_scores(source: np.ndarray, output: np.ndarray, outside: np.ndarray) -> tuple[float, float]:
    """(PSNR dB, SSIM) of two (H, W, 3) uint8 frames over the ``outside`` pixels."""
    diff = source[outside].astype(np.float64) - output[outside].astype(np.float64)
    mse = float(np.mean(diff**2)) if diff.size else 0.0
    psnr = PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, 10 * np.log10(255.0**2 / mse))
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in (source, output)]
    _, ssim_map = structural_similarity(grey[0], grey[1], data_range=255, full=True)
    return float(psnr), float(ssim_map[outside].mean()) if outside.any() else 1.0


def unchanged_region(
    source_chunks: Iterable[np.ndarray], output_chunks: Iterable[np.ndarray], track: FaceTrack
) -> UnchangedResult:
    """Compare two streams of equal geometry frame by frame (up to the shorter); ``track`` is the source's."""
    psnrs, ssims, fractions = [], [], []
    i = 0
    for src_chunk, out_chunk in zip(_frames(source_chunks), _frames(output_chunks)):
        if src_chunk.shape != out_chunk.shape:
            raise ValueError(f"frame sizes differ: source {src_chunk.shape}, output {out_chunk.shape}")
        if i >= track.num_frames:
            break
        h, w = src_chunk.shape[:2]
        outside = ~changed_region(track, i, w, h)
        p, s = frame_scores(src_chunk, out_chunk, outside)
        psnrs.append(p)
        ssims.append(s)
        fractions.append(float(outside.mean()))
        i += 1
    if not psnrs:
        raise ValueError("no frame to compare")
    return UnchangedResult(float(np.mean(psnrs)), float(np.mean(ssims)), len(psnrs), float(np.mean(fractions)))


def _frames(chunks: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
    for chunk in chunks:
        yield from (chunk if chunk.ndim == 4 else [chunk])
