"""Float crops through ``lipsync.media.paste`` (the engine interface's float32 pixel units, unclamped: LatentSync's
hand-over): an integer-valued float crop pastes to the byte as its uint8 self on every path (the restore rule and
the mask paths, RGB and I420), so uint8 engines keep their output; the mask paths quantise a float crop as
``as_uint8`` does (clamped, truncated); the restore rule clamps after its resampling, not before."""

from __future__ import annotations

import numpy as np
import pytest

from lipsync.media.paste import as_uint8, paste_face, paste_face_i420, restore_region
from lipsync.media.yuv import Colour

S = 64
WARP = (52, 70)  # a (W, H) like LatentSync's (warp_size(64))
W, H = 160, 128


def _frame(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (H // 8, W // 8, 3), dtype=np.uint8)
    return np.kron(small, np.ones((8, 8, 1), np.uint8))  # blocks: texture without noise


def _i420() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(16, 236, (H * 3 // 2, W), dtype=np.uint8)


AFFINE = np.array([[0.6, 0.08, -30.0], [-0.08, 0.6, -10.0]])  # frame -> crop: a rotated, scaled face
# a box crop (MuseTalk's kind): frame box x 40..120, y 30..110 resized to S² (pixel centres kept)
BOX = np.array([[S / 80, 0, (0.5 - 40) * S / 80 - 0.5], [0, S / 80, (0.5 - 30) * S / 80 - 0.5]])
MASK = np.clip(1.2 - np.hypot(*np.mgrid[-1:1:S * 1j, -1:1:S * 1j]), 0, 1).astype(np.float32)


@pytest.mark.parametrize("affine", [AFFINE, BOX], ids=["warp", "box"])
def test_an_integer_valued_float_crop_pastes_as_its_uint8_self(affine):
    frame, crop = _frame(), _frame(2)[:S, :S].copy()
    as_float = crop.astype(np.float32)
    for kw in (dict(mask=MASK), dict(mask=None, restore_warp=WARP)):
        mask = kw.pop("mask")
        np.testing.assert_array_equal(paste_face(frame, as_float, affine, mask, **kw),
                                      paste_face(frame, crop, affine, mask, **kw))
        one, other = _i420(), _i420()
        paste_face_i420(one, as_float, affine, mask, Colour(), **kw)
        paste_face_i420(other, crop, affine, mask, Colour(), **kw)
        np.testing.assert_array_equal(one, other)


def test_mask_paths_quantise_a_float_crop_as_published():
    frame = _frame()
    rng = np.random.default_rng(3)
    crop = rng.uniform(-40, 300, (S, S, 3)).astype(np.float32)  # overshoots both ways, fractions
    assert as_uint8(crop).dtype == np.uint8 and np.array_equal(as_uint8(crop), np.clip(crop, 0, 255).astype(np.uint8))
    for affine in (AFFINE, BOX):
        np.testing.assert_array_equal(paste_face(frame, crop, affine, MASK),
                                      paste_face(frame, as_uint8(crop), affine, MASK))
        one, other = _i420(), _i420()
        paste_face_i420(one, crop, affine, MASK, Colour())
        paste_face_i420(other, as_uint8(crop), affine, MASK, Colour())
        np.testing.assert_array_equal(one, other)


def test_the_restore_rule_clamps_after_its_resampling():
    """A face that overshoots 255 in a patch beside a dark band: where the bicubic resize and the warp mix the
    overshoot with its neighbours the paste differs from the face clamped first (the band's edge lifted); away
    from the patch (beyond the resampling taps) and outside the restore's box, the same."""
    frame = _frame()
    crop = np.full((S, S, 3), 200.0, np.float32)
    crop[20:40, 20:40] = 330.0  # overshoot (the VAE's output beyond [-1, 1])
    crop[20:40, 40:44] = 120.0  # a dark band beside it: averaged with the overshoot
    hot = paste_face(frame, crop, AFFINE, None, restore_warp=WARP).astype(int)
    clamped = paste_face(frame, as_uint8(crop), AFFINE, None, restore_warp=WARP).astype(int)
    x0, y0, x1, y1 = restore_region(AFFINE, S, WARP, W, H)
    outside = np.ones((H, W), bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(hot[outside], clamped[outside])
    assert (hot - clamped).max() > 10  # the band's edge is lifted by the overshoot
    ys, xs = np.nonzero(np.abs(hot - clamped).max(-1) > 1)
    cx, cy = AFFINE[:, :2] @ np.stack([xs, ys]) + AFFINE[:, 2:]  # where in the crop they are
    assert len(xs) and (cx > 14).all() and (cx < 50).all() and (cy > 14).all() and (cy < 46).all()
