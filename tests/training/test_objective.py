"""The training objective is inference's conditioning, piece for piece (tiny config, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lipsync.model.pipio.autoencoder_lipsync import encode_chunked, plan_chunks
from lipsync.model.pipio.conditioning import FrameSource
from lipsync.model.pipio.pipeline import LipSyncPipeline
from lipsync.model.pipio.text_encoder import encode_prompt
from lipsync.training.objective import (
    ObjectiveConfig,
    build_example,
    chunk_range,
    draw_references,
    flow_matching_loss,
    flow_sigmas,
)
from lipsync.training.shards import ClipSample

SIZE, FPS = 64, 25.0


@pytest.fixture(scope="module")
def pipe() -> LipSyncPipeline:
    return LipSyncPipeline.from_config("tiny", init_seed=0)


def clip(num_frames: int, seed: int = 0) -> ClipSample:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    frames = np.stack([np.roll(base, 3 * i, axis=1) for i in range(num_frames)])
    mouth = np.zeros((num_frames, SIZE, SIZE), np.uint8)
    mouth[:, 36:60, 16:48] = 255  # binary, so uint8 storage is exact
    audio = (0.2 * rng.standard_normal(int(16000 * num_frames / FPS))).astype(np.float32)
    return ClipSample("clip", frames, mouth, np.zeros((num_frames, 68, 2), np.float32), np.ones(num_frames, bool),
                      audio, None, {"fps": FPS})


def test_block_latents_equal_the_whole_clip_chunked_encode(pipe):
    """A block's latents come from the whole chunks that determine them: equal to encoding the whole clip."""
    sample = clip(81)
    source = FrameSource(sample.crops, np.zeros((81, SIZE, SIZE), np.float32), np.zeros(81, bool), 8, 32)
    plan, _ = plan_chunks(81, 17, 8)
    with torch.no_grad():
        whole = encode_chunked(pipe.vae, lambda s, e: source.read_masked(s, e, "cpu", torch.float32), 81, 17, 8)
        for g0, g1 in [(0, 3), (2, 5), (4, 7), (6, 11), (8, 11)]:
            lo, hi = chunk_range(81, plan.chunk_size, plan.overlap, g0, g1)
            assert lo % 8 == 0 and (hi - lo - 1) % 8 == 0
            sub = FrameSource(sample.crops[lo:hi], np.zeros((hi - lo, SIZE, SIZE), np.float32),
                               np.zeros(hi - lo, bool), 8, 32)
            part = encode_chunked(pipe.vae, lambda s, e: sub.read_masked(s, e, "cpu", torch.float32), hi - lo, 17, 8)
            got = part[:, :, g0 - lo // 8 : g1 - lo // 8]
            assert torch.allclose(got, whole[:, :, g0:g1], atol=1e-5), (g0, g1, lo, hi)
            assert hi - lo < 81 or g1 == 11  # (only what is needed is encoded)


def test_training_sigmas_are_the_samplers_shifted_sigmas(pipe):
    scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
    mu = 0.7
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / 8, 8), mu=mu)
    u = torch.linspace(1.0, 1.0 / 8, 8, dtype=torch.float64)
    assert torch.allclose(flow_sigmas(pipe, u, mu).float(), scheduler.sigmas[:-1].float(), atol=1e-6)
    assert torch.allclose(scheduler.timesteps, scheduler.sigmas[:-1] * scheduler.config.num_train_timesteps)


def test_references_are_drawn_away_from_the_block():
    sample = clip(100)
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx, rule = draw_references(sample, 40, 57, 4, 8, rng)
        assert rule == "gap" and len(idx) == 4 and all(i <= 32 or i >= 64 for i in idx)
    short = clip(17)  # nothing outside the block: the farthest frames, said so
    idx, rule = draw_references(short, 0, 17, 2, 8, rng)
    assert rule == "inside" and set(idx.tolist()) == {0, 16}


def test_an_example_is_conditioned_as_inference_conditions_the_block(pipe):
    """Same clip, whole-clip block, mouth mask: the condition, RoPE coordinates, audio windows, timestep shift and
    reference placement the transformer gets in training equal what ``LipSyncPipeline.__call__`` gives it."""
    sample = clip(33)
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, args: seen.append(args))
    try:
        pipe(sample.crops, sample.mouth.astype(np.float32) / 255, np.zeros(33, bool), sample.audio, FPS,
             reference_frames=sample.crops[[5]], vae_chunk_size=17, vae_overlap_window_width=8,
             frame_block_width=40, num_inference_steps=1, guidance_scale=1.0, appearance_cond_strength=1)
    finally:
        hook.remove()
    _, cond, _, coords, frames, conditioning = seen[0][:6]
    text, mask = encode_prompt(pipe.tokenizer, pipe.text_encoder, pipe.config.default_prompt,
                               pipe.config.max_prompt_tokens)
    cfg = ObjectiveConfig(frame_block_width=40, vae_chunk_size=17, vae_overlap_window_width=8,
                          mask_kinds={"mouth": 1.0}, mid_video=0.0, audio_dropout=0.0, max_appearance_strength=1)
    example = build_example(pipe, sample, cfg, text, mask, np.random.default_rng(0), torch.device("cpu"))
    assert example.num_frames == frames == 5
    assert torch.allclose(example.cond, cond, atol=1e-5)
    assert torch.equal(example.video_coords, coords)
    assert torch.allclose(example.conditioning.audio, conditioning.audio, atol=1e-5)
    assert torch.equal(example.conditioning.text, conditioning.text)
    # references: the same encoding and placement rule (time relative to the block), other frames
    assert torch.equal(example.conditioning.reference_coords[0, 0], conditioning.reference_coords[0, 0])
    assert example.conditioning.references.shape == conditioning.references.shape
    assert example.info["reference_rule"] == "inside"  # a whole-clip block: only the farthest frames remain


def test_a_mid_video_block_uses_global_time_and_the_loss_falls_with_training(pipe):
    sample = clip(81, seed=1)
    text, mask = encode_prompt(pipe.tokenizer, pipe.text_encoder, pipe.config.default_prompt,
                               pipe.config.max_prompt_tokens)
    cfg = ObjectiveConfig(frame_block_width=16, vae_chunk_size=17, vae_overlap_window_width=8, mid_video=1.0)
    example = build_example(pipe, sample, cfg, text, mask, np.random.default_rng(3), torch.device("cpu"))
    g0 = example.info["g0"]
    assert g0 > 0 and float(example.video_coords[0, 0, 0]) == pytest.approx(g0 * 8 / FPS)
    ref_time = example.conditioning.reference_coords[0, 0]
    assert torch.allclose(ref_time, torch.full_like(ref_time, g0 * 8 / FPS + pipe.config.reference_time_seconds))
    # the same example, a few optimizer steps: the loss on it falls (gradients reach the transformer)
    model = LipSyncPipeline.from_config("tiny", init_seed=1).transformer.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = flow_matching_loss(model, pipe, example, cfg, torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(pipe):
    sample = clip(17, seed=2)
    text, mask = encode_prompt(pipe.tokenizer, pipe.text_encoder, pipe.config.default_prompt,
                               pipe.config.max_prompt_tokens)
    cfg = ObjectiveConfig(frame_block_width=16, vae_chunk_size=17, vae_overlap_window_width=8)
    example = build_example(pipe, sample, cfg, text, mask, np.random.default_rng(0), torch.device("cpu"))
    results = []
    for checkpointing in (False, True):
        model = LipSyncPipeline.from_config("tiny", init_seed=3).transformer.train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        loss = flow_matching_loss(model, pipe, example, cfg, torch.Generator().manual_seed(0))
        loss.backward()
        results.append((float(loss.detach()), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-6)
    assert len(results[0][1]) == len(results[1][1])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(results[0][1], results[1][1]))
