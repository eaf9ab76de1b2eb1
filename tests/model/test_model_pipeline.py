"""End-to-end behaviour of the tiny pipeline: shapes, determinism, progress and cancel, knob invariances."""

from __future__ import annotations

import numpy as np
import pytest

SIZE = 64

FAST = dict(vae_chunk_size=9, vae_overlap_window_width=0, frame_block_width=136)


@pytest.mark.parametrize(
    "clip",
    [
        pytest.param(dict(num_frames=17), id="video"),
        pytest.param(dict(num_frames=17, generate=slice(6, 10)), id="video-with-generated-frames"),
        pytest.param(dict(num_frames=12, image=True), id="image-all-generated"),
        pytest.param(dict(num_frames=1, image=True), id="single-frame"),
        pytest.param(dict(num_frames=23, generate=slice(0, 3)), id="not-8n+1-generated-at-start"),
    ],
)
def test_output_shape_and_dtype(tiny_pipe, make_clip, clip):
    inputs = make_clip(**clip)
    refs = inputs["frames"][:1] if clip.get("image") else None
    out = tiny_pipe(**inputs, reference_frames=refs, **FAST)
    assert out.frames.shape == inputs["frames"].shape
    assert out.frames.dtype == np.uint8


def test_generated_frames_are_synthesised(tiny_pipe, make_clip):
    inputs = make_clip(17, generate=slice(6, 10))
    out = tiny_pipe(**inputs, **FAST)
    outside = inputs["mouth_mask"][6] == 0
    # A generate frame is regenerated everywhere, also outside the mouth, unlike a source frame.
    assert (out.frames[6][outside] != inputs["frames"][6][outside]).any()
    assert (out.frames[5][outside] == inputs["frames"][5][outside]).all()


def test_same_seed_is_bit_identical_and_other_seed_differs(tiny_pipe, make_clip):
    inputs = make_clip(17, generate=slice(8, 10))
    first = tiny_pipe(**inputs, seed=7, **FAST).frames
    again = tiny_pipe(**inputs, seed=7, **FAST).frames
    other = tiny_pipe(**inputs, seed=8, **FAST).frames
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_audio_changes_the_mouth(tiny_pipe, make_clip):
    inputs = make_clip(17)
    out_a = tiny_pipe(**inputs, **FAST).frames
    inputs["audio"] = inputs["audio"][::-1].copy()
    out_b = tiny_pipe(**inputs, **FAST).frames
    assert not np.array_equal(out_a, out_b)


def test_feed_forward_splits_do_not_change_the_result(tiny_pipe, make_clip):
    inputs = make_clip(17)
    one = tiny_pipe(**inputs, feed_forward_num_splits=1, **FAST).frames.astype(int)
    four = tiny_pipe(**inputs, feed_forward_num_splits=4, **FAST).frames.astype(int)
    # Same math on token chunks; float reassociation can move a value across a rounding boundary: <= 1 level.
    assert np.abs(one - four).max() <= 1


def test_frame_block_as_wide_as_the_clip_equals_no_blocking(tiny_pipe, make_clip):
    inputs = make_clip(33)  # 5 latent frames
    whole = tiny_pipe(**{**inputs}, **{**FAST, "frame_block_width": 10_000})
    exact = tiny_pipe(**{**inputs}, **{**FAST, "frame_block_width": 40})  # 40 / 8 = 5 latent frames = the clip
    assert whole.num_frame_blocks == exact.num_frame_blocks == 1
    assert np.array_equal(whole.frames, exact.frames)
    blocked = tiny_pipe(**inputs, **{**FAST, "frame_block_width": 16})
    assert blocked.num_frame_blocks > 1 and blocked.frames.shape == whole.frames.shape


def test_callback_reports_every_stage_in_order(tiny_pipe, make_clip):
    calls = []
    tiny_pipe(**make_clip(17), callback=lambda *a: calls.append(a), vae_chunk_size=9, vae_overlap_window_width=0,
              frame_block_width=8, num_inference_steps=2)
    stages = [c[0] for c in calls]
    assert stages == ["vae_encode"] * 2 + (["block"] * 3 + ["denoise"]) * 2 + ["vae_decode"] * 2
    assert [c[1:3] for c in calls if c[0] == "denoise"] == [(1, 2), (2, 2)]


class Cancelled(Exception):
    pass


def test_callback_exception_stops_at_that_step(tiny_pipe, make_clip):
    calls = []

    def cancel_on_first_step(stage, step, total, message):
        calls.append(stage)
        if stage == "denoise":
            raise Cancelled()

    with pytest.raises(Cancelled):
        tiny_pipe(**make_clip(17), callback=cancel_on_first_step, num_inference_steps=3, **FAST)
    assert calls.count("denoise") == 1 and "vae_decode" not in calls


def test_conditioning_strengths_change_the_output(tiny_pipe, make_clip):
    inputs = make_clip(17, generate=slice(8, 12))
    embedding = np.random.default_rng(1).standard_normal(128).astype(np.float32)
    base = tiny_pipe(**inputs, face_id_embedding=embedding, face_id_cond_strength=0, **FAST)
    with_id = tiny_pipe(**inputs, face_id_embedding=embedding, face_id_cond_strength=16, **FAST)
    auto = tiny_pipe(**inputs, face_id_embedding=embedding, face_id_cond_strength=-1, **FAST)
    assert not np.array_equal(base.frames, with_id.frames)
    assert auto.face_id_cond_strength == 8  # generated frames present -> the 'generate' rule
    strong_refs = tiny_pipe(**inputs, appearance_cond_strength=16, **FAST)
    weak_refs = tiny_pipe(**inputs, appearance_cond_strength=1, **FAST)
    assert not np.array_equal(strong_refs.frames, weak_refs.frames)


def test_face_id_auto_rule(tiny_pipe):
    resolve = tiny_pipe.resolve_face_id_strength
    assert resolve(-1, has_embedding=False, any_generate=True)[0] == 0
    assert resolve(-1, has_embedding=True, any_generate=True)[0] == 8
    assert resolve(-1, has_embedding=True, any_generate=False)[0] == 4
    assert resolve(12, has_embedding=True, any_generate=False)[0] == 12
    assert resolve(12, has_embedding=False, any_generate=False)[0] == 0


def test_default_prompt_is_noted(tiny_pipe, make_clip):
    out = tiny_pipe(**make_clip(9), **FAST)
    assert any("default" in note for note in out.notes)
    custom = tiny_pipe(**make_clip(9), prompt="a person talking", **FAST)
    assert not any("default" in note for note in custom.notes)
    assert not np.array_equal(out.frames, custom.frames)


@pytest.mark.parametrize(
    "override, field",
    [
        (dict(vae_chunk_size=10), "vae_chunk_size"),
        (dict(vae_chunk_size=17, vae_overlap_window_width=17), "vae_overlap_window_width"),
        (dict(frame_block_width=0), "frame_block_width"),
        (dict(feed_forward_num_splits=0), "feed_forward_num_splits"),
        (dict(face_id_cond_strength=17), "face_id_cond_strength"),
        (dict(face_id_cond_strength=-2), "face_id_cond_strength"),
        (dict(appearance_cond_strength=0), "appearance_cond_strength"),
        (dict(fps=0.0), "frame_rate"),
        (dict(face_id_embedding=np.zeros(7, np.float32)), "face_id_cond_strength"),
    ],
)
def test_bad_arguments_raise_named_errors(tiny_pipe, make_clip, override, field):
    from lipsync.contract.errors import InvalidInput

    inputs = {**make_clip(9), **FAST, **override}
    with pytest.raises(ValueError) as info:
        tiny_pipe(**inputs)
    assert isinstance(info.value, InvalidInput) and info.value.field == field
    assert info.value.to_body()["detail"][0]["loc"] == ["body", field]


def test_image_input_without_reference_is_rejected(tiny_pipe, make_clip):
    with pytest.raises(ValueError, match="reference_frames"):
        tiny_pipe(**make_clip(9, image=True), **FAST)


def test_bad_frame_size_is_rejected(tiny_pipe, make_clip):
    inputs = make_clip(9)
    inputs["frames"] = inputs["frames"][:, :48]
    inputs["mouth_mask"] = inputs["mouth_mask"][:, :48]
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny_pipe(**inputs, **FAST)


def test_overlap_adjustment_is_reported(tiny_pipe, make_clip):
    out = tiny_pipe(**make_clip(33), vae_chunk_size=17, vae_overlap_window_width=12, frame_block_width=136)
    assert out.vae_overlap_window_width == 8
    assert any("vae_overlap_window_width 12 -> 8" in note for note in out.notes)
    assert out.frames.shape == (33, SIZE, SIZE, 3)


def test_bf16_pipeline_runs_and_keeps_outside_pixels(make_clip):
    """The GPU dtype path (bf16 weights and activations, fp32 latents/scheduler/timestep) on CPU."""
    import torch

    from lipsync.model.pipio.pipeline import LipSyncPipeline

    pipe = LipSyncPipeline.from_config("tiny", init_seed=0, dtype=torch.bfloat16)
    inputs = make_clip(17, generate=slice(4, 6))
    out = pipe(**inputs, face_id_embedding=np.ones(128, np.float32), **FAST)
    keep = (inputs["mouth_mask"] == 0) & ~inputs["generate"][:, None, None]
    assert out.frames.shape == inputs["frames"].shape
    assert np.array_equal(out.frames[keep], inputs["frames"][keep])
