"""Masking: the pipeline composites in pixel space, so pixels outside the mouth mask are kept *exactly*."""

from __future__ import annotations

import numpy as np

from lipsync.model.pipio.conditioning import composite, latent_mouth_mask

FAST = dict(vae_chunk_size=9, vae_overlap_window_width=0, frame_block_width=136)


def test_pixels_outside_the_mask_are_bit_identical(tiny_pipe, make_clip):
    inputs = make_clip(17, generate=slice(9, 11))
    out = tiny_pipe(**inputs, **FAST).frames
    keep = (inputs["mouth_mask"] == 0) & ~inputs["generate"][:, None, None]
    assert keep.sum() > 0.5 * keep.size
    assert np.array_equal(out[keep], inputs["frames"][keep])
    inside = inputs["mouth_mask"] == 1
    assert (out[inside] != inputs["frames"][inside]).any()  # the mouth really was regenerated


def test_composite_is_exact_where_mask_is_zero_and_blends_where_soft():
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    decoded = rng.uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    mask = np.zeros((2, 8, 8), np.float32)
    mask[:, 2:4] = 1.0
    mask[:, 4] = 0.5
    out = composite(original, decoded, mask)
    assert np.array_equal(out[mask == 0], original[mask == 0])
    assert np.array_equal(out[mask == 1], np.rint(decoded[mask == 1]).astype(np.uint8))
    half = np.rint(0.5 * decoded[mask == 0.5] + 0.5 * original[mask == 0.5].astype(np.float32))
    assert np.array_equal(out[mask == 0.5], half.astype(np.uint8))


def test_latent_mask_covers_every_masked_pixel():
    mask = np.zeros((17, 64, 64), np.float32)
    mask[9, 40, 5] = 0.3  # one pixel in pixel frame 9 -> latent frame 2 (frames 9..16), token (1, 0)
    latent = latent_mouth_mask(mask, 8, 32)
    assert latent.shape == (3, 2, 2)
    assert latent[2, 1, 0] == np.float32(0.3) and latent.sum() == np.float32(0.3)


def test_long_clip_with_chunks_and_blocks_keeps_outside_pixels(tiny_pipe, make_clip):
    # 8 latent frames; VAE chunks of 17 at stride 8: starts 0, 8, ..., 40 (6 chunks); blocks of 3 latent frames
    # with 1 overlap: starts 0, 2, 4 and the end-aligned 5 (4 blocks).
    inputs = make_clip(57, generate=slice(20, 26))
    calls = []
    out = tiny_pipe(**inputs, vae_chunk_size=17, vae_overlap_window_width=8, frame_block_width=24,
                    num_inference_steps=1, callback=lambda *a: calls.append(a[0]))
    assert out.frames.shape == inputs["frames"].shape and out.num_frame_blocks == 4
    assert calls.count("vae_encode") == calls.count("vae_decode") == 6
    keep = (inputs["mouth_mask"] == 0) & ~inputs["generate"][:, None, None]
    assert np.array_equal(out.frames[keep], inputs["frames"][keep])
