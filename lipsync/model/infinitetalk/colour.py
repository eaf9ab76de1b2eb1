"""The authors' colour correction (``match_and_blend_colors``): each decoded frame's CIE Lab channels are moved
to the reference frame's mean and standard deviation, converted back, clipped and blended with the frame by
``strength``. The sRGB ↔ Lab conversions are skimage's formulas (D65, 2° observer), written here."""

from __future__ import annotations

import numpy as np

_M = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
_M_INV = np.linalg.inv(_M)
_WHITE = np.array([0.95047, 1.0, 1.08883])


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) in [0, 1] → Lab."""
    rgb = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = rgb @ _M.T / _WHITE
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    fy = (lab[..., 0] + 16.0) / 116.0
    fx, fz = fy + lab[..., 1] / 500.0, fy - lab[..., 2] / 200.0
    fz = np.maximum(fz, 0)
    f = np.stack([fx, fy, fz], axis=-1)
    xyz = np.where(f > 0.2068966, f ** 3, (f - 16.0 / 116.0) / 7.787) * _WHITE
    rgb = np.clip(xyz @ _M_INV.T, 0, None)
    return np.where(rgb > 0.0031308, 1.055 * rgb ** (1 / 2.4) - 0.055, 12.92 * rgb)


def match_colours(frames: np.ndarray, reference: np.ndarray, strength: float) -> np.ndarray:
    """frames (T, H, W, 3) and reference (H, W, 3) in [−1, 1] → corrected frames in [−1, 1] (float32)."""
    if strength == 0.0:
        return frames
    src = np.clip((frames.astype(np.float64) + 1) / 2, 0, 1)
    ref = rgb_to_lab(np.clip((reference.astype(np.float64) + 1) / 2, 0, 1))
    ref_mean, ref_std = ref.reshape(-1, 3).mean(0), ref.reshape(-1, 3).std(0)
    out = np.empty_like(src)
    for i, frame in enumerate(src):
        lab = rgb_to_lab(frame)
        mean, std = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0)
        scale = np.divide(ref_std, std, out=np.zeros(3), where=std > 0)
        corrected = np.where(std > 0, (lab - mean) * scale + ref_mean, ref_mean)
        out[i] = (1 - strength) * frame + strength * np.clip(lab_to_rgb(corrected), 0, 1)
    return (out * 2 - 1).astype(np.float32)
