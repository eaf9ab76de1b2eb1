"""Paste-back: put a (generated) face crop into its frame through a feathered mask.

The crop is warped back with the inverse of its crop affine into the mask's bounding region only (the
mouth, not the whole frame), the mask likewise, and blended in uint8: out = frame·(1 - m) + crop·m. That is
the published engines' paste-back (no colour transfer): a crop the model returns unchanged gives the frame
back within one level.

Colour matching (``colour_match``, ``LIPSYNC_PASTE_COLOUR_MATCH``; ours, off by default): the crop's colour is
first shifted so its mean along the seam (where the mask is between 0 and 1) equals the original frame's, so a
slightly different skin tone or exposure from the model never shows as an edge; it moves every pasted pixel by
that shift, and only those. Antialiasing (``antialias``, ``LIPSYNC_PASTE_ANTIALIAS``; ours, off by default): a
crop shrunk by more than 1.25x into the frame is blurred first (sigma ``0.45 sqrt(scale² - 1)`` crop pixels) so
the bilinear warp does not alias; it changes pasted pixels only, where the crop has detail finer than a frame
pixel.

The aligned-restore rule (``restore_warp``; LatentSync's published ``AlignRestore.restore_img``): the crop was a
(W, H) similarity warp of the frame resized to S x S, so it goes back the way the authors bring it back — resized
to (W, H) (bicubic, antialiased, in float), warped into the frame bilinearly (pixel-index coordinates, as kornia's
``warp_affine`` with ``align_corners``) — through a mask built in frame pixels: the warped (W, H) rectangle, eroded
2 x 2, ``w_edge = isqrt(area) // 20`` with the area in frame pixels, eroded by a ``2 w_edge`` square, blurred by a
``2 w_edge + 1`` Gaussian (sigma ``0.3 (w_edge - 1) + 0.8``, reflected borders); ``frame (1 - soft) + soft ·
eroded · face``, truncated to uint8. Isotropic in the frame whatever the crop's aspect; the engine's crop-space
mask is not used.

Crops are uint8, or float32 in pixel units (0-255 scale, unclamped, unrounded: an engine's float output, as
LatentSync's authors restore it). The restore rule resamples either in float and clamps and truncates once, after
the warp — a float crop overshooting [0, 255] is clamped in the frame, not before the resize — so a uint8 crop
gives what it always gave. The mask paths quantise a float crop first (``as_uint8``: clamped, truncated).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from lipsync.media.crop import crop_face, landmarks_in_crop
from lipsync.media.faces import FaceTrack
from lipsync.media.masks import face_blend_mask
from lipsync.media.yuv import Colour, even_box, frame_height, planes, rgb_to_yuv_matrix, yuv_to_rgb_matrix


CHROMA_TO_LUMA = np.array([[2.0, 0, 0.5], [0, 2.0, 0.5], [0, 0, 1]])
"""A 4:2:0 chroma sample's coordinates -> the luma coordinates of its 2x2 block's centre (affine, 3x3)."""
COLOUR_STATS_SIZE = 64
"""Side (pixels) at which the seam colours are compared: a mean needs no detail."""


def as_uint8(crop: np.ndarray) -> np.ndarray:
    """A crop as uint8: unchanged when it is; a float one (pixel units) clamped to [0, 255] and truncated, as the
    published ``(x / 2 + 0.5).clamp(0, 1) * 255`` then ``.to(uint8)`` makes an image."""
    if crop.dtype == np.uint8:
        return crop
    return np.clip(crop, 0, 255).astype(np.uint8)


def colour_shift(crop: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(3,) float32: what to add to ``crop`` so its mean along the mask's seam (where 0 < mask < 1) equals
    ``reference``'s. All three are the same size."""
    seam = mask * (1.0 - mask)
    total = float(seam.sum())
    if total < 1e-6:
        return np.zeros(3, np.float32)
    diff = (reference.astype(np.float32) - crop.astype(np.float32)) * seam[..., None]
    return (diff.reshape(-1, 3).sum(0) / total).astype(np.float32)


def _seam_shift(frame: np.ndarray, crop: np.ndarray, affine: np.ndarray, mask: np.ndarray) -> np.ndarray:
    size = crop.shape[0]
    small = min(size, COLOUR_STATS_SIZE)
    scale = small / size
    reference = crop_face(frame, affine * scale, small)  # the frame's own face at the small size
    return colour_shift(
        cv2.resize(crop, (small, small), interpolation=cv2.INTER_AREA),
        reference,
        cv2.resize(mask.astype(np.float32), (small, small), interpolation=cv2.INTER_AREA),
    )


def restore_region(affine: np.ndarray, size: int, warp: tuple[int, int], width: int, height: int
                   ) -> tuple[int, int, int, int] | None:
    """Frame box the restore rule can touch: the warp's whole footprint (bilinear coverage reaches one warp pixel
    past its last pixel centre), one frame pixel around, so the box's own border is never covered."""
    w, h = warp
    inv = cv2.invertAffineTransform(_frame_from_warp(affine, size, warp))
    corners = np.array([[-1, -1], [w, -1], [-1, h], [w, h]], np.float64)
    pts = corners @ inv[:, :2].T + inv[:, 2]
    x0, y0 = np.floor(pts.min(0)).astype(int) - 1
    x1, y1 = np.ceil(pts.max(0)).astype(int) + 2
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    return (int(x0), int(y0), int(x1), int(y1)) if x1 > x0 and y1 > y0 else None


def _frame_from_warp(affine: np.ndarray, size: int, warp: tuple[int, int]) -> np.ndarray:
    """(2, 3) frame -> warp-space affine, from the frame -> crop one (the crop = the warp resized to size²,
    pixel centres kept: crop = (warp + 0.5) size / W - 0.5)."""
    w, h = warp
    sx, sy = size / w, size / h
    resize = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], np.float64)
    return (np.linalg.inv(resize) @ np.vstack([affine, [0, 0, 1]]))[:2]


def restore_face(crop: np.ndarray, affine: np.ndarray, warp: tuple[int, int],
                 region: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The aligned-restore rule on the frame box ``region``: (face (h, w, 3) float32 in [0, 255] = eroded mask x
    the warped face, soft (h, w) float32 blend weight). ``out = frame (1 - soft) + face soft``. ``crop``: uint8,
    or float in pixel units (unclamped: clamped here, after the resize and the warp, as published)."""
    import torch
    import torch.nn.functional as F

    x0, y0, x1, y1 = region
    w, h = warp
    m = _frame_from_warp(affine, crop.shape[0], warp)
    # the face in float: pixel units -> [0, 1] (unclamped), resized to the warp's (H, W) as torchvision does
    # (bicubic, antialiased)
    pixels = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float() / 255.0
    face = F.interpolate(pixels, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
    # bilinear sampling at frame pixel (x, y) -> warp point m (x, y, 1); zeros outside; align_corners grid
    xs, ys = np.meshgrid(np.arange(x0, x1, dtype=np.float64), np.arange(y0, y1, dtype=np.float64))
    sx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    sy = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    grid = torch.from_numpy(np.stack([2 * sx / (w - 1) - 1, 2 * sy / (h - 1) - 1], -1).astype(np.float32))[None]
    face = F.grid_sample(face, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    ones = F.grid_sample(torch.ones(1, 1, h, w), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    # the published warp runs in [-1, 1] with the fill 127 there outside the face: in [0, 1] that is the
    # sample + 64 (1 - coverage) (it only reaches pixels the erosion then zeroes)
    face = ((face + 64.0 * (1 - ones))[0].permute(1, 2, 0).clamp(0, 1) * 255).numpy()
    inside = ones[0, 0].numpy()
    # 2 x 2 erosion, the window's origin at (1, 1): min of rows y-1..y, columns x-1..x; nothing erodes from
    # outside the frame (kornia's geodesic border), so the region's own border is padded with +inf
    padded = np.pad(inside, ((1, 0), (1, 0)), constant_values=np.inf)
    eroded = np.minimum(np.minimum(padded[1:, 1:], padded[:-1, 1:]), np.minimum(padded[1:, :-1], padded[:-1, :-1]))
    eroded = eroded.astype(np.float32)
    w_edge = max(1, int(float(eroded.sum(dtype=np.float32)) ** 0.5) // 20)
    centre = cv2.erode(eroded, np.ones((2 * w_edge, 2 * w_edge), np.uint8))  # the border never erodes
    k = 2 * w_edge + 1
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    soft = cv2.GaussianBlur(centre, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
    return face * eroded[..., None], soft


def paste_face(
    frame: np.ndarray, crop: np.ndarray, affine: np.ndarray, mask: np.ndarray, *, colour_match: bool = False,
    antialias: bool = False, restore_warp: tuple[int, int] | None = None, out: np.ndarray | None = None,
) -> np.ndarray:
    """One frame (H, W, 3) uint8 with ``crop`` (S, S, 3) blended in through ``mask`` (S, S) in [0, 1].

    ``affine`` is the frame → crop transform the crop was made with. Only the frame pixels under the mask's
    bounding box are touched, in uint8 (a saturating colour shift and one ``cv2.blendLinear``; within one code
    value of the float blend). ``out``: where to write (may be ``frame`` itself, which is then changed in
    place); by default a copy of ``frame``. ``restore_warp`` (W, H): the aligned-restore rule instead of
    ``mask`` (module docstring); no colour matching there. ``crop``: uint8, or float32 in pixel units (the restore
    rule resamples it unclamped, as published; the mask paths take ``as_uint8`` of it).
    """
    h, w = frame.shape[:2]
    if out is None:
        out = frame.copy()
    elif out is not frame:
        out[...] = frame
    if restore_warp is not None:
        region = restore_region(affine, crop.shape[0], restore_warp, w, h)
        if region is not None:
            x0, y0, x1, y1 = region
            face, soft = restore_face(crop, affine, restore_warp, region)
            soft = soft[..., None]
            blended = soft * face + (1 - soft) * frame[y0:y1, x0:x1].astype(np.float32)
            out[y0:y1, x0:x1] = blended.astype(np.uint8)  # truncated, as published
        return out
    crop = as_uint8(crop)
    region = _mask_region(affine, mask, w, h)
    if region is None:
        return out
    shift = _seam_shift(frame, crop, affine, mask) if colour_match else np.zeros(3, np.float32)
    box = _integer_box(affine, crop.shape[0], w, h)
    if box is not None:  # a box crop (MuseTalk): resized back into its box, as published (cv2.resize, bilinear)
        x0, y0, x1, y1 = box
        size = (x1 - x0, y1 - y0)
        warped = cv2.resize(_prepared_crop(crop, affine, shift, antialias), size, interpolation=cv2.INTER_LINEAR)
        alpha = cv2.resize(mask.astype(np.float32, copy=False), size, interpolation=cv2.INTER_LINEAR)
        roi = np.ascontiguousarray(frame[y0:y1, x0:x1])
        out[y0:y1, x0:x1] = cv2.blendLinear(warped, roi, alpha, 1.0 - alpha)
        return out
    warped, alpha = _warp_into(region, crop, affine, mask, shift, antialias)
    x0, y0, x1, y1 = region
    roi = np.ascontiguousarray(frame[y0:y1, x0:x1])
    out[y0:y1, x0:x1] = cv2.blendLinear(warped, roi, alpha, 1.0 - alpha)
    return out


def paste_face_i420(i420: np.ndarray, crop: np.ndarray, affine: np.ndarray, mask: np.ndarray, colour: Colour,
                    *, colour_match: bool = False, antialias: bool = False,
                    restore_warp: tuple[int, int] | None = None) -> None:
    """``paste_face`` on a decoded I420 frame (H * 3 / 2, W), in place (``lipsync.media.yuv``), without converting
    the frame: the seam colours are read by warping the planes straight to the small comparison size, the
    (small) crop is converted to Y'CbCr once and warped onto the mask's box plane by plane — luma at full
    resolution, chroma at half — and blended there. Every pixel the mask does not reach stays exactly as
    decoded; the rest matches the RGB paste converted to 4:2:0 up to rounding and chroma siting."""
    h, w = frame_height(i420), i420.shape[1]
    if restore_warp is not None:
        _restore_i420(i420, crop, affine, restore_warp, colour)
        return
    crop = as_uint8(crop)
    region = _mask_region(affine, mask, w, h)
    region = region and even_box(*region, w, h)
    if region is None:
        return
    y, u, v = planes(i420)
    shift = _seam_shift_planes(y, u, v, crop, affine, mask, colour) if colour_match else np.zeros(3, np.float32)
    src = _prepared_crop(crop, affine, shift, antialias)
    yuv = cv2.transform(src, rgb_to_yuv_matrix(colour))
    x0, y0, x1, y1 = region
    m = affine.copy()
    m[:, 2] += m[:, :2] @ np.array([x0, y0], np.float64)  # region pixel -> crop pixel
    mc = m @ CHROMA_TO_LUMA  # chroma sample (centre of 2x2) -> crop
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    mask = mask.astype(np.float32, copy=False)
    full, half = (x1 - x0, y1 - y0), ((x1 - x0) // 2, (y1 - y0) // 2)
    luma = cv2.warpAffine(np.ascontiguousarray(yuv[..., 0]), m, full, flags=flags, borderMode=cv2.BORDER_REPLICATE)
    chroma = cv2.warpAffine(np.ascontiguousarray(yuv[..., 1:]), mc, half, flags=flags,
                            borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(mask, m, full, flags=flags, borderValue=0.0)
    alpha_c = cv2.warpAffine(mask, mc, half, flags=flags, borderValue=0.0)
    dst = y[y0:y1, x0:x1]
    dst[...] = cv2.blendLinear(luma, np.ascontiguousarray(dst), alpha, 1.0 - alpha)
    for c, plane in enumerate((u, v)):
        dst = plane[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2]
        dst[...] = cv2.blendLinear(np.ascontiguousarray(chroma[..., c]), np.ascontiguousarray(dst), alpha_c,
                                   1.0 - alpha_c)


def _restore_i420(i420: np.ndarray, crop: np.ndarray, affine: np.ndarray, warp: tuple[int, int],
                  colour: Colour) -> None:
    """The aligned-restore rule on I420 planes: the face and its blend weight at luma resolution (as in RGB), the
    face made Y'CbCr there; chroma takes both averaged over each 2 x 2 block."""
    h, w = frame_height(i420), i420.shape[1]
    region = restore_region(affine, crop.shape[0], warp, w, h)
    region = region and even_box(*region, w, h)
    if region is None:
        return
    x0, y0, x1, y1 = region
    face, soft = restore_face(crop, affine, warp, region)
    yuv = cv2.transform(face, rgb_to_yuv_matrix(colour))
    y, u, v = planes(i420)
    dst = y[y0:y1, x0:x1]
    dst[...] = np.clip(soft * yuv[..., 0] + (1 - soft) * dst + 0.5, 0, 255).astype(np.uint8)
    half = ((x1 - x0) // 2, (y1 - y0) // 2)
    soft_c = cv2.resize(soft, half, interpolation=cv2.INTER_AREA)
    chroma = cv2.resize(np.ascontiguousarray(yuv[..., 1:]), half, interpolation=cv2.INTER_AREA)
    for c, plane in enumerate((u, v)):
        dst = plane[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2]
        dst[...] = np.clip(soft_c * chroma[..., c] + (1 - soft_c) * dst + 0.5, 0, 255).astype(np.uint8)


def _seam_shift_planes(y: np.ndarray, u: np.ndarray, v: np.ndarray, crop: np.ndarray, affine: np.ndarray,
                       mask: np.ndarray, colour: Colour) -> np.ndarray:
    """``_seam_shift`` read from the planes: each warped straight to the small comparison size (luma with the
    crop affine, chroma with it composed with the half-resolution grid), then the few pixels made RGB."""
    size = crop.shape[0]
    small = min(size, COLOUR_STATS_SIZE)
    m = affine * (small / size)
    mc = m @ CHROMA_TO_LUMA  # chroma plane pixel -> small crop pixel
    warp = dict(flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    ycc = cv2.merge([cv2.warpAffine(y, m, (small, small), **warp),
                     cv2.warpAffine(u, mc, (small, small), **warp),
                     cv2.warpAffine(v, mc, (small, small), **warp)])
    reference = cv2.transform(ycc, yuv_to_rgb_matrix(colour))
    return colour_shift(
        cv2.resize(crop, (small, small), interpolation=cv2.INTER_AREA),
        reference,
        cv2.resize(mask.astype(np.float32), (small, small), interpolation=cv2.INTER_AREA),
    )


def _prepared_crop(crop: np.ndarray, affine: np.ndarray, shift: np.ndarray, antialias: bool = False) -> np.ndarray:
    """The crop colour-shifted and, with ``antialias``, blurred when it will be shrunk a lot (so the warp does not
    alias; ours: the published pastes resize bilinearly without it), both at the crop's (small) size."""
    scale = float(np.sqrt(abs(np.linalg.det(affine[:, :2]))))  # crop pixels per frame pixel
    src = crop
    if antialias and scale > 1.25:
        src = cv2.GaussianBlur(crop, (0, 0), sigmaX=0.45 * np.sqrt(scale * scale - 1.0))
    if np.any(np.abs(shift) >= 0.5):
        src = cv2.add(src, tuple(float(v) for v in np.round(shift)) + (0.0,), dtype=cv2.CV_8U)
    return src


def _warp_into(region: tuple[int, int, int, int], crop: np.ndarray, affine: np.ndarray, mask: np.ndarray,
               shift: np.ndarray, antialias: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The colour-shifted crop and its mask warped back onto the frame box ``region``: (h, w, 3) uint8 and
    (h, w) float32."""
    x0, y0, x1, y1 = region
    m = affine.copy()
    m[:, 2] += m[:, :2] @ np.array([x0, y0], np.float64)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(_prepared_crop(crop, affine, shift, antialias), m, (x1 - x0, y1 - y0), flags=flags,
                            borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(mask.astype(np.float32, copy=False), m, (x1 - x0, y1 - y0), flags=flags, borderValue=0.0)
    return warped, alpha


def _integer_box(affine: np.ndarray, size: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The integer frame box (x0, y0, x1, y1) an axis-aligned box-resize affine maps onto the crop (crop pixel
    centres: x' = (x - x0 + 0.5) size / (x1 - x0) - 0.5), when it lies inside the frame; else None."""
    if not np.isfinite(affine).all() or affine[0, 1] != 0 or affine[1, 0] != 0:
        return None
    sx, sy = affine[0, 0], affine[1, 1]
    x0, y0 = 0.5 - (affine[0, 2] + 0.5) / sx, 0.5 - (affine[1, 2] + 0.5) / sy
    box = np.array([x0, y0, x0 + size / sx, y0 + size / sy])
    rounded = np.round(box)
    if not np.allclose(box, rounded, atol=1e-6):
        return None
    x0, y0, x1, y1 = (int(v) for v in rounded)
    return (x0, y0, x1, y1) if 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height else None


def _mask_region(affine: np.ndarray, mask: np.ndarray, width: int, height: int) -> tuple[int, int, int, int] | None:
    """Frame-pixel box (x0, y0, x1, y1) covering where ``mask`` (crop coords) is above zero, or None."""
    x, y, bw, bh = cv2.boundingRect((mask > 0).astype(np.uint8))
    if bw == 0 or bh == 0:
        return None
    inv = cv2.invertAffineTransform(affine)
    corners = np.array([[x - 1, y - 1], [x + bw + 1, y - 1], [x - 1, y + bh + 1], [x + bw + 1, y + bh + 1]],
                       np.float64)
    pts = corners @ inv[:, :2].T + inv[:, 2]
    x0, y0 = np.floor(pts.min(0)).astype(int)
    x1, y1 = np.ceil(pts.max(0)).astype(int) + 1
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def paste_faces(
    frames: np.ndarray,
    crops: np.ndarray,
    track: FaceTrack,
    indices: Sequence[int],
    *,
    masks: np.ndarray | None = None,
    colour_match: bool = False,
    antialias: bool = False,
    restore_warp: tuple[int, int] | None = None,
) -> np.ndarray:
    """Paste ``crops`` (n, S, S, 3) back into ``frames`` (n, H, W, 3), the track's frames ``indices``.

    ``masks`` (n, S, S) float in [0, 1] says where the crop replaces the frame (e.g. ``mouth_mask``); by
    default the feathered whole-face ``face_blend_mask``. Frames whose index is -1 or without a tracked face
    come back unchanged. Returns a new array.
    """
    if not (len(frames) == len(crops) == len(indices)):
        raise ValueError(f"{len(frames)} frames, {len(crops)} crops and {len(indices)} indices must match")
    size = crops.shape[1]
    out = np.array(frames, copy=True)
    for k, i in enumerate(indices):
        if i < 0 or not track.present[i]:
            continue
        mask = masks[k] if masks is not None else face_blend_mask(landmarks_in_crop(track, i, size), size)
        out[k] = paste_face(frames[k], crops[k], track.affine(i, size), mask, colour_match=colour_match,
                            antialias=antialias, restore_warp=restore_warp)
    return out
