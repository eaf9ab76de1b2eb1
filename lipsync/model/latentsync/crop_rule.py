"""LatentSync's face geometry: the published 3-point alignment to its template, its two-stage crop, its fixed mouth
mask (re-drawn here from measurements of the published image) and the restore blend mask.

Alignment (``latentsync/utils/affine_transform.py``): three points — the two eyebrow centres and a nose point —
fitted by a similarity transform (centred, scaled by their standard deviation, rotation from an SVD) to the
template ``[[17, 20], [58, 20], [37.5, 40]] * r`` with ``r = 2.8 * S / 256``; the points are rounded first, and
a running average (0.2 previous + 0.8 current) of the normalised nose offset is added to the translation, frame
after frame ("smooth"). The frame is warped bilinearly to (75 r) x (100 r) — 420 x 560 for S = 512 — with grey
127 outside, truncated to uint8, then Lanczos-resized to S x S. The engine's frame -> crop affine is that warp
composed with the resize; ``crop`` repeats both steps exactly.

Our landmarks are dlib's 68: eyebrow centres = means of points 17-21 and 22-26 (the published means of five
InsightFace-106 eyebrow points); nose = mean of 28-30 (the bridge below the eyes), which on a frontal face lies
where the template puts the nose point (20/41 of the eyebrow spacing below the eyebrows).
"""

from __future__ import annotations

import cv2
import numpy as np

TEMPLATE = np.array([[19 - 2, 30 - 10], [56 + 2, 30 - 10], [37.5, 45 - 5]], np.float64)
FILL = 127
SMOOTH_KEEP = 0.2
MASK_BASE = 256
# The published mask.png (256 x 256; 1 = keep the reference, 0 = the region the model repaints), measured:
# the repaint region spans rows 95-242, columns 9-247, with a notch (columns 78-177, rows 95-127) that keeps
# the nose, and a rounded chin. Its outline, in pixel centres, clockwise from the top left:
MOUTH_OUTLINE = np.array([
    (9, 95), (77, 95), (77, 128), (178, 128), (178, 95), (247, 95), (247, 129), (246, 137), (246, 145), (245, 153),
    (245, 161), (244, 169), (240, 177), (234, 185), (229, 193), (223, 201), (215, 209), (206, 217), (194, 225),
    (178, 233), (156, 241), (152, 242), (131, 242), (108, 241), (82, 233), (66, 225), (52, 217), (42, 209),
    (34, 201), (26, 193), (21, 185), (16, 177), (12, 169), (11, 161), (11, 153), (10, 145), (10, 137), (9, 129),
], np.int32)


def template_ratio(size: int) -> float:
    return size / 256 * 2.8


def warp_size(size: int) -> tuple[int, int]:
    """(width, height) of the published intermediate warp: 420 x 560 for 512, 210 x 280 for 256."""
    r = template_ratio(size)
    return int(75 * r), int(100 * r)


def three_points(landmarks: np.ndarray) -> np.ndarray:
    """(3, 2): left eyebrow centre, right eyebrow centre, nose point, from (68, 2) iBUG landmarks; rounded."""
    pts = np.stack([landmarks[17:22].mean(0), landmarks[22:27].mean(0), landmarks[28:31].mean(0)])
    return np.round(pts.astype(np.float64))


def similarity(points: np.ndarray, template: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(2, 3) frame -> template similarity as published, and the normalised nose offset used for smoothing."""
    c1, c2 = points.mean(0), template.mean(0)
    p1, p2 = points - c1, template - c2
    s1, s2 = p1.std(ddof=1), p2.std(ddof=1)  # torch.std over all coordinates (unbiased)
    n1, n2 = p1 / s1, p2 / s2
    u, _, vh = np.linalg.svd(n1.T @ n2)
    v = vh.T
    rot = v @ u.T
    if np.linalg.det(rot) < 0:
        v[:, -1] = -v[:, -1]
        rot = v @ u.T
    scale = s2 / s1
    m = np.concatenate([scale * rot, (c2 - scale * rot @ c1)[:, None]], axis=1)
    return m, n2[2] - n1[2]


def resize_affine(size: int) -> np.ndarray:
    """(3, 3) warp-space -> crop-space affine of cv2.resize from ``warp_size`` to ``size`` (pixel centres)."""
    w, h = warp_size(size)
    sx, sy = size / w, size / h
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], np.float64)


def align_track(landmarks: np.ndarray, present: np.ndarray, size: int) -> np.ndarray:
    """(T, 2, 3) frame -> crop affines for a (T, 68, 2) landmark track; NaN rows where ``present`` is False.
    The published running offset is carried over the frames in order (across gaps, as the published loop
    carries it over every frame it aligns)."""
    template = TEMPLATE * template_ratio(size)
    resize = resize_affine(size)
    out = np.full((len(landmarks), 2, 3), np.nan)
    bias = None
    for i in np.flatnonzero(present):
        if not np.isfinite(landmarks[i]).all():
            continue
        m, offset = similarity(three_points(landmarks[i]), template)
        bias = offset if bias is None else SMOOTH_KEEP * bias + (1 - SMOOTH_KEEP) * offset
        m[:, 2] += bias
        out[i] = (resize @ np.vstack([m, [0, 0, 1]]))[:2]
    return out


def crop_aligned(frame: np.ndarray, affine: np.ndarray, size: int) -> np.ndarray:
    """The published crop: bilinear warp to the template size (grey outside), truncated to uint8, Lanczos to S."""
    w, h = warp_size(size)
    warp = (np.linalg.inv(resize_affine(size)) @ np.vstack([affine, [0, 0, 1]]))[:2]
    face = cv2.warpAffine(np.ascontiguousarray(frame, dtype=np.float32), warp, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(FILL, FILL, FILL))
    face = face.astype(np.uint8)  # truncation, as the published .astype(np.uint8) of the float warp
    return cv2.resize(face, (size, size), interpolation=cv2.INTER_LANCZOS4)


def mouth_mask(size: int) -> np.ndarray:
    """(S, S) float32 in [0, 1]: 1 = keep the reference, 0 = repaint; drawn at 256 and Lanczos-resized, as
    the published mask image is loaded."""
    base = np.full((MASK_BASE, MASK_BASE), 255, np.uint8)
    cv2.fillPoly(base, [MOUTH_OUTLINE], 0)
    if size != MASK_BASE:
        base = cv2.resize(base, (size, size), interpolation=cv2.INTER_LANCZOS4)
    return base.astype(np.float32) / 255.0


def restore_mask(size: int) -> np.ndarray:
    """(S, S) float32 paste-back mask in crop space, a likeness of the published restore's (the worker pastes by
    the restore rule itself, in frame pixels: ``lipsync.media.paste``, ``restore_warp``): the whole warped crop, eroded by
    ``2 * w_edge`` and feathered by a Gaussian of ``2 * w_edge + 1`` taps (sigma ``0.3 (w_edge - 1) + 0.8``), with
    ``w_edge = sqrt(face area) // 20`` in frame pixels — which is S / 20 in crop pixels whatever the face's size,
    so the mask is the same for every frame (the published extra 2 x 2 erosion, one frame pixel, is left out)."""
    w_edge = size / 20
    mask = np.zeros((size, size), np.float32)
    lo = int(round(w_edge))
    mask[lo : size - lo, lo : size - lo] = 1.0
    sigma = 0.3 * (w_edge - 1) + 0.8
    return np.clip(cv2.GaussianBlur(mask, (0, 0), sigmaX=sigma, sigmaY=sigma), 0.0, 1.0)
