"""The LatentSync engine against the published recipe, written here in its own few lines over the same modules
(loaded with the stock library classes), on random weights in the published layout; seeded output bit-exact on
CPU; segments pulled lazily; knobs; cancel between denoising steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lipsync.media.paste import as_uint8
from lipsync.model.engine import CropBatch, EngineOptions, EngineRequest, Knobs
from lipsync.model.weights import detect, load_engine

FPS = 25.0


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    from lipsync.model.latentsync.random_weights import write_random_weights

    return write_random_weights(tmp_path_factory.mktemp("weights") / "latentsync", seed=0)


@pytest.fixture(scope="module")
def engine(weights):
    # DeepCache off: this recipe runs every step whole (tests/engines/test_fidelity_latentsync.py holds the default)
    return load_engine(weights, EngineOptions(num_inference_steps=2, deep_cache=False), "latentsync")


def _crops(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth random crops (a face is not needed by the model itself)."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (n, size // 8, size // 8, 3), dtype=np.uint8)
    return np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC) for c in small])


def _audio(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * n / FPS)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t) + 0.01 * rng.standard_normal(t.size)
            ).astype(np.float32)


def _request(n: int, audio: np.ndarray, progress=None, **knobs) -> EngineRequest:
    logs: list[str] = []
    return EngineRequest(audio=audio, fps=FPS, num_frames=n, generate=np.zeros(n, bool), is_image=False,
                         knobs=Knobs(**knobs), log=logs.append, progress=progress or (lambda *a: None))


def _batches(crops: np.ndarray, chunk: int = 7, pulled: list | None = None, present=None):
    present = np.ones(len(crops), bool) if present is None else present
    for s in range(0, len(crops), chunk):
        if pulled is not None:
            pulled.append(s)
        n = min(chunk, len(crops) - s)
        yield CropBatch(s, crops[s : s + n], present[s : s + n], np.zeros((n, 68, 2), np.float32))


def _generate(engine, request, crops, **kw) -> np.ndarray:
    return np.concatenate(list(engine.generate(request, _batches(crops, **kw))))


def published_recipe(root: Path, crops: np.ndarray, audio: np.ndarray, *, seed: int, steps: int, guidance: float):
    """``LipsyncPipeline.__call__`` after face alignment, in its own steps: the modules loaded with the stock
    classes (diffusers AutoencoderKL, DDIMScheduler; our UNet/whisper modules are what is under test)."""
    import yaml
    from diffusers import AutoencoderKL, DDIMScheduler

    from lipsync.model.latentsync.audio import AudioFeatures, load_whisper_encoder
    from lipsync.model.latentsync.config import CONFIG_DIR, parse_config
    from lipsync.model.latentsync.crop_rule import mouth_mask
    from lipsync.model.latentsync.loading import load_unet

    cfg = parse_config(yaml.safe_load((root / "unet_config.yaml").read_text()), variant=None, source="test")
    unet = load_unet(root / "latentsync_unet.pt", cfg.unet)
    vae = AutoencoderKL.from_pretrained(root / "sd-vae").eval()
    scheduler = DDIMScheduler.from_pretrained(CONFIG_DIR)
    whisper = AudioFeatures(load_whisper_encoder(root / "whisper" / "tiny.pt"), audio, FPS)
    size, n = cfg.resolution, len(crops)
    mask_image = torch.from_numpy(mouth_mask(size).astype(np.float64))
    generator = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(steps)
    all_latents = torch.randn((1, 4, 1, size // 8, size // 8), generator=generator).repeat(1, 1, n, 1, 1)
    out = []
    with torch.no_grad():
        for i in range(-(-n // 16)):
            faces = torch.from_numpy(crops[i * 16 : (i + 1) * 16]).permute(0, 3, 1, 2).contiguous()  # stacked
            audio_embeds = whisper.frames(i * 16, len(faces))
            audio_embeds = torch.cat([torch.zeros_like(audio_embeds), audio_embeds])
            pixel_values = (faces / 255.0 - 0.5) / 0.5
            masked = (pixel_values * mask_image).float()
            masks = mask_image[None, None].expand(len(faces), 1, size, size)
            mask_latents = F.interpolate(masks, size=(size // 8, size // 8)).float()
            masked_latents = vae.encode(masked).latent_dist.sample(generator=generator) * 0.18215
            ref_latents = vae.encode(pixel_values).latent_dist.sample(generator=generator) * 0.18215
            def b(x):
                return torch.cat([x.permute(1, 0, 2, 3)[None]] * 2)
            mask_latents, masked_latents, ref_latents = b(mask_latents), b(masked_latents), b(ref_latents)
            latents = all_latents[:, :, i * 16 : (i + 1) * 16]
            for t in scheduler.timesteps:
                x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
                x = torch.cat([x, mask_latents, masked_latents, ref_latents], dim=1)
                noise = unet(x, t, audio_embeds)
                uncond, cond = noise.chunk(2)
                noise = uncond + guidance * (cond - uncond)
                latents = scheduler.step(noise, t, latents, eta=0.0, generator=generator).prev_sample
            decoded = vae.decode(latents[0].permute(1, 0, 2, 3) / 0.18215).sample
            repaint = (1 - masks).float()  # paste_surrounding_pixels_back(decoded, pixel_values, 1 - masks)
            combined = decoded * repaint + pixel_values * (1 - repaint)
            out.append(((combined / 2 + 0.5).clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def test_detected_as_latentsync(weights):
    check = detect(weights)
    assert check.layout.engine == "latentsync" and check.ok, check.report()


def test_engine_equals_the_published_recipe_bit_exact(engine, weights):
    n, size = 20, engine.info.crop_size  # a full segment and a short one
    crops, audio = _crops(n, size), _audio(n)
    request = _request(n, audio, seed=1247, frame_block_width=16, vae_chunk_size=17)  # the VAE sees a segment
    got = _generate(engine, request, crops)
    want = published_recipe(weights, crops, audio, seed=1247, steps=2, guidance=1.5)
    # handed over in float pixel units (the paste quantises after its resampling); as images, the published ones
    assert got.shape == (n, size, size, 3) and got.dtype == np.float32
    np.testing.assert_array_equal(as_uint8(got), want)
    # smaller VAE batches: the same draws (one posterior sample per segment); batched kernels may round apart
    chunked = _generate(engine, _request(n, audio, seed=1247, frame_block_width=16, vae_chunk_size=9), crops)
    assert np.abs(as_uint8(chunked).astype(int) - want).max() <= 1
    # outside the mouth mask the output is the input crop (decoded * (1 - mask) + crop * mask), up to the float
    # round trip through [-1, 1] (no truncation: it is the paste's, once)
    from lipsync.model.latentsync.crop_rule import mouth_mask

    keep = mouth_mask(size) == 1.0
    assert np.abs(got[:, keep] - crops[:, keep]).max() < 1e-3
    assert np.abs(got[:, ~keep] - crops[:, ~keep]).mean() > 5  # random weights repaint the mouth
    m = request.metrics
    assert (m["num_inference_steps"], m["guidance_scale"], m["segments"], m["segment_frames"]) == (2, 1.5, 2, 16)


@pytest.mark.slow
def test_seeded_and_batched_output(engine):
    n, size = 32, engine.info.crop_size
    crops, audio = _crops(n, size, seed=3), _audio(n, seed=3)
    one = _generate(engine, _request(n, audio, seed=5, frame_block_width=16), crops)
    again = _generate(engine, _request(n, audio, seed=5, frame_block_width=16, feed_forward_num_splits=4), crops)
    np.testing.assert_array_equal(one, again)  # same seed: bit-exact; feed-forward chunks change nothing
    other = _generate(engine, _request(n, audio, seed=6, frame_block_width=16), crops)
    assert not np.array_equal(one, other)
    request = _request(n, audio, seed=5, frame_block_width=40, vae_chunk_size=65)  # asks 2 segments per call
    assert np.array_equal(_generate(engine, request, crops), one)
    assert request.metrics["segments_per_call"] == 1  # capped: a CPU gains nothing from batching segments
    engine.cpu_segments_per_call = 8  # as a large GPU's free memory allows
    try:
        request = _request(n, audio, seed=5, frame_block_width=40, vae_chunk_size=65)
        both = _generate(engine, request, crops)
    finally:
        engine.cpu_segments_per_call = 1
    assert request.metrics["segments_per_call"] == 2
    # the same draws; batched kernels may round differently
    assert np.abs(as_uint8(both).astype(int) - as_uint8(one)).max() <= 1


def test_segments_are_pulled_lazily_and_faceless_frames_pass_through(engine):
    n, size = 40, engine.info.crop_size
    crops, audio = _crops(n, size, seed=4), _audio(n)
    present = np.ones(n, bool)
    present[3] = False
    present[32:] = False  # the last segment has no face at all: not run through the model
    pulled: list[int] = []
    steps: list[tuple] = []
    request = _request(n, audio, progress=lambda *a: steps.append(a), frame_block_width=16)
    gen = engine.generate(request, _batches(crops, chunk=5, pulled=pulled, present=present))
    first = next(gen)
    assert len(first) == 16 and pulled == [0, 5, 10, 15]  # one segment's crops, not the video's
    np.testing.assert_array_equal(first[3], crops[3])
    rest = list(gen)
    assert sum(map(len, rest)) == n - 16
    np.testing.assert_array_equal(rest[-1], crops[32:])
    assert len([s for s in steps if s[0].startswith("denoising frames")]) == 2 * 2  # 2 segments x 2 steps


def test_cancel_between_denoising_steps(engine):
    class Cancelled(Exception):
        pass

    calls = []

    def progress(stage, done, total):
        calls.append((stage, done))
        if stage.startswith("denoising") and done == 1:
            raise Cancelled

    n = 16
    with pytest.raises(Cancelled):
        list(engine.generate(_request(n, _audio(n), progress=progress), _batches(_crops(n, engine.info.crop_size))))
    assert calls[-1][1] == 1 and calls[-1][0].startswith("denoising frames 0-15")


def test_unused_knobs_are_said(engine):
    n = 4
    request = _request(n, _audio(n), prompt="hello", face_id_cond_strength=3)
    _generate(engine, request, _crops(n, engine.info.crop_size))
    logs = request.log.__self__  # the list the request logs into
    assert any("face_id_cond_strength=3" in m and "custom_prompt" in m and "not used" in m for m in logs), logs
    assert any("fixed by training" in m for m in logs)


def test_step_count_outside_the_schedule_is_a_load_error(weights):
    with pytest.raises(ValueError, match="LIPSYNC_NUM_INFERENCE_STEPS=1000"):
        load_engine(weights, EngineOptions(num_inference_steps=1000), "latentsync")


def test_alignment_of_a_real_face_matches_the_template():
    """The astronaut's dlib landmarks through the 512 rule: the eyebrows and the nose land on the template (in
    crop pixels), the mouth and the chin inside the repainted region, the eyes outside it."""
    import skimage.data

    from lipsync.media.faces import DlibFaceAnalyzer
    from lipsync.model.latentsync import crop_rule

    frame = np.ascontiguousarray(skimage.data.astronaut())
    lm = DlibFaceAnalyzer().detect(frame)[0].landmarks
    affine = crop_rule.align_track(lm[None], np.array([True]), 512)[0]
    pts = lm @ affine[:, :2].T + affine[:, 2]
    template = crop_rule.TEMPLATE * crop_rule.template_ratio(512)
    in_crop = template @ crop_rule.resize_affine(512)[:2, :2].T + crop_rule.resize_affine(512)[:2, 2]
    np.testing.assert_allclose(crop_rule.three_points(pts), in_crop, atol=25)
    repaint = crop_rule.mouth_mask(512) < 0.5
    def at(i):
        return repaint[int(pts[i, 1]), int(pts[i, 0])]
    assert all(at(i) for i in (48, 54, 57, 62, 8)) and not any(at(i) for i in (36, 45, 27))
