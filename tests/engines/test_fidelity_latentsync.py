"""LatentSync with the default settings against its authors' published inference (bytedance/LatentSync
``scripts/inference.py`` + ``LipsyncPipeline.__call__``, ``inference.sh``: DDIM 20 steps, guidance 1.5,
``--enable_deepcache``), written here step by step in our own lines on random weights in the published layout:
the sampler's output bit for bit on CPU in fp32, with DeepCache (the default) and without it
(``LIPSYNC_DEEP_CACHE=false``).

DeepCache is the ``DeepCache`` package's ``DeepCacheSDHelper(cache_interval=3, cache_branch_id=0)`` as the
published script enables it, re-told here the helper's way (every down, mid and up module wrapped; a skipped
step returns the module's output of the last full step) over an independently loaded UNet, so the engine's own
implementation (``lipsync.model.latentsync.unet.DeepCache``: one kept tensor, the shallow branch run) is checked
against the helper's rule, not against itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lipsync.model.engine import CropBatch, EngineOptions, EngineRequest, Knobs
from lipsync.model.weights import load_engine

FPS = 25.0
STEPS = 4  # full UNet at steps 0 and 3, the cache at 1 and 2 (as 0, 3, 6, ... of the published 20)
N = 17  # a whole 16-frame segment and a short one: the cache starts again with each segment


class DeepCacheHelper:
    """The DeepCache package's ``DeepCacheSDHelper`` with ``set_params(cache_interval, cache_branch_id=0)`` in
    uniform mode, in our own lines: the UNet's forward notes which step of the schedule runs (the index of its
    timestep); each down/mid/up module (resnets, attentions, resamplers, whole blocks; not the motion modules) is
    wrapped, and on a step that is not a multiple of the interval (counted from the first step the helper saw)
    returns its cached output when it lies in the deep branch: every down block, the middle block, and all up
    modules but the last layer of the last up block."""

    def __init__(self, unet, timesteps, interval: int = 3):
        self.timesteps = [int(t) for t in timesteps]
        self.interval = interval
        self.start: int | None = None
        self.current = 0
        self.cached: dict = {}
        self.full_steps: list[int] = []
        unet_forward = unet.forward

        def forward(sample, t, *args, **kwargs):
            self.current = self.timesteps.index(int(t))
            return unet_forward(sample, t, *args, **kwargs)

        unet.forward = forward
        for i, block in enumerate(unet.down_blocks):
            for j, m in enumerate(block.attentions or []):
                self._wrap(m, ("down", "attentions", i, j), i, j, "down")
            for j, m in enumerate(block.resnets):
                self._wrap(m, ("down", "resnet", i, j), i, j, "down")
            for m in block.downsamplers or []:
                self._wrap(m, ("down", "downsampler", i, len(block.resnets)), i, len(block.resnets), "down")
            self._wrap(block, ("down", "block", i, 0), i, 0, "down")
        self._wrap(unet.mid_block, ("mid", "mid_block", 0, 0), 0, 0, "mid")
        count = len(unet.up_blocks)
        for i, block in enumerate(unet.up_blocks):
            layers = len(block.resnets)
            for j, m in enumerate(block.attentions or []):
                self._wrap(m, ("up", "attentions", count - i - 1, layers - j - 1), count - i - 1, layers - j - 1, "up")
            for j, m in enumerate(block.resnets):
                self._wrap(m, ("up", "resnet", count - i - 1, layers - j - 1), count - i - 1, layers - j - 1, "up")
            for m in block.upsamplers or []:
                self._wrap(m, ("up", "upsampler", count - i - 1, 0), count - i - 1, 0, "up")
            self._wrap(block, ("up", "block", count - i - 1, 0), count - i - 1, 0, "up")

    def _skip(self, block_i: int, layer_i: int, kind: str) -> bool:
        if self.start is None:
            self.start = self.current
        if (self.current - self.start) % self.interval == 0:
            return False
        if block_i > 0 or kind == "mid":  # cache_block_id 0
            return True
        return layer_i >= 0 if kind == "down" else layer_i > 0  # cache_layer_id 0

    def _wrap(self, module, key, block_i: int, layer_i: int, kind: str) -> None:
        forward = module.forward

        def wrapped(*args, **kwargs):
            if self._skip(block_i, layer_i, kind):
                return self.cached[key]
            if key == ("down", "block", 0, 0):
                self.full_steps.append(self.current)
            self.cached[key] = forward(*args, **kwargs)
            return self.cached[key]

        module.forward = wrapped


def published(root: Path, crops: np.ndarray, audio: np.ndarray, *, seed: int, steps: int, guidance: float,
              deepcache: bool) -> tuple[np.ndarray, list[int]]:
    """``LipsyncPipeline.__call__`` after face alignment: (the crops it hands to the restore step, as uint8 the
    way ``pixel_values_to_images`` makes them; the steps the UNet ran whole). The faces are stacked
    (contiguous (f, c, h, w)), each normalised on its own, the mask image is float64 with three channels."""
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
    scheduler.set_timesteps(steps)
    helper = DeepCacheHelper(unet, scheduler.timesteps) if deepcache else None
    whisper = AudioFeatures(load_whisper_encoder(root / "whisper" / "tiny.pt"), audio, FPS)
    size, num_frames = cfg.resolution, 16
    mask_image = torch.from_numpy(np.repeat(mouth_mask(size)[None].astype(np.float64), 3, 0))  # (3, S, S)
    faces = torch.stack([torch.from_numpy(c).permute(2, 0, 1) for c in crops])  # affine_transform_video
    generator = torch.Generator().manual_seed(seed)
    all_latents = torch.randn((1, 4, 1, size // 8, size // 8), generator=generator)
    all_latents = all_latents.repeat(1, 1, len(crops), 1, 1) * scheduler.init_noise_sigma
    out = []
    with torch.no_grad():
        for i in range(-(-len(crops) // num_frames)):
            audio_embeds = whisper.frames(i * num_frames, len(faces[i * num_frames : (i + 1) * num_frames]))
            audio_embeds = torch.cat([torch.zeros_like(audio_embeds), audio_embeds])
            inference_faces = faces[i * num_frames : (i + 1) * num_frames]
            latents = all_latents[:, :, i * num_frames : (i + 1) * num_frames]
            # ImageProcessor.prepare_masks_and_masked_images: per face /255, normalise, times the mask
            pixel_values, masked, masks = [], [], []
            for face in inference_faces:
                p = (face / 255.0 - 0.5) / 0.5
                pixel_values.append(p)
                masked.append(p * mask_image)
                masks.append(mask_image[0:1])
            pixel_values, masked, masks = torch.stack(pixel_values), torch.stack(masked), torch.stack(masks)
            # prepare_mask_latents, prepare_image_latents (f c h w -> 1 c f h w, doubled for guidance)
            mask_latents = F.interpolate(masks, size=(size // 8, size // 8)).float()
            masked_latents = vae.encode(masked.float()).latent_dist.sample(generator=generator) * 0.18215
            ref_latents = vae.encode(pixel_values.float()).latent_dist.sample(generator=generator) * 0.18215

            def doubled(x):
                x = x.permute(1, 0, 2, 3)[None]
                return torch.cat([x, x])

            mask_latents, masked_latents, ref_latents = map(doubled, (mask_latents, masked_latents, ref_latents))
            for t in scheduler.timesteps:
                unet_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
                unet_input = torch.cat([unet_input, mask_latents, masked_latents, ref_latents], dim=1)
                noise_pred = unet(unet_input, t, audio_embeds)
                uncond, cond = noise_pred.chunk(2)
                noise_pred = uncond + guidance * (cond - uncond)
                latents = scheduler.step(noise_pred, t, latents, eta=0.0, generator=generator).prev_sample
            decoded = vae.decode(latents[0].permute(1, 0, 2, 3) / 0.18215).sample
            m = (1 - masks).float()  # paste_surrounding_pixels_back(decoded, pixel_values, 1 - masks)
            combined = decoded * m + pixel_values * (1 - m)
            out.append(((combined.permute(0, 2, 3, 1) / 2 + 0.5).clamp(0, 1) * 255).to(torch.uint8).numpy())
    return np.concatenate(out), (helper.full_steps if helper else list(range(steps)) * 2)


def _crops(n: int, size: int) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(3)
    small = rng.integers(0, 255, (n, size // 8, size // 8, 3), dtype=np.uint8)
    return np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC) for c in small])


def _audio(n: int) -> np.ndarray:
    t = np.arange(int(16000 * n / FPS)) / 16000
    rng = np.random.default_rng(1)
    return (0.3 * np.sin(2 * np.pi * 200 * t) * np.sin(2 * np.pi * 4 * t)
            + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def _run(engine, crops: np.ndarray, audio: np.ndarray, seed: int) -> tuple[np.ndarray, dict]:
    request = EngineRequest(audio=audio, fps=FPS, num_frames=len(crops), generate=np.zeros(len(crops), bool),
                            is_image=False, knobs=Knobs(seed=seed, frame_block_width=16, vae_chunk_size=16),
                            log=lambda s: None, progress=lambda *a: None)
    batches = [CropBatch(s, crops[s : s + 8], np.ones(len(crops[s : s + 8]), bool),
                         np.zeros((len(crops[s : s + 8]), 68, 2), np.float32)) for s in range(0, len(crops), 8)]
    full_calls = []
    hook = engine.unet.down_blocks[0].register_forward_hook(lambda *a: full_calls.append(1))
    try:
        out = np.concatenate(list(engine.generate(request, batches)))
    finally:
        hook.remove()
    return out, dict(request.metrics, full_unet_calls=len(full_calls))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: extra threads only contend on a busy CPU (the engine and the recipe run alike)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def root(small_weights) -> Path:
    return small_weights["latentsync"]


def test_default_sampler_is_the_published_one_with_deepcache_bit_for_bit(root):
    engine = load_engine(root, EngineOptions(num_inference_steps=STEPS), "latentsync")  # the defaults
    crops, audio = _crops(N, engine.info.crop_size), _audio(N)
    got, metrics = _run(engine, crops, audio, seed=1247)
    want, full_steps = published(root, crops, audio, seed=1247, steps=STEPS, guidance=1.5, deepcache=True)
    np.testing.assert_array_equal(got, want)
    assert full_steps == [0, 3, 0, 3]  # per segment: steps 0 and 3 whole, 1 and 2 from the cache
    assert metrics["deep_cache_interval"] == 3 and metrics["full_unet_calls"] == 4


def test_deep_cache_off_is_every_step_whole_and_changes_only_the_mouth(root):
    """LIPSYNC_DEEP_CACHE=false: the published pipeline without ``--enable_deepcache``, bit for bit; what it
    changes against the default is inside the repainted mouth region only."""
    from lipsync.model.latentsync.crop_rule import mouth_mask

    engine = load_engine(root, EngineOptions(num_inference_steps=STEPS, deep_cache=False), "latentsync")
    crops, audio = _crops(N, engine.info.crop_size), _audio(N)
    got, metrics = _run(engine, crops, audio, seed=1247)
    want, _ = published(root, crops, audio, seed=1247, steps=STEPS, guidance=1.5, deepcache=False)
    np.testing.assert_array_equal(got, want)
    assert metrics["deep_cache_interval"] == 1 and metrics["full_unet_calls"] == 2 * STEPS
    cached, _ = published(root, crops, audio, seed=1247, steps=STEPS, guidance=1.5, deepcache=True)
    keep = mouth_mask(engine.info.crop_size) == 1.0
    assert np.array_equal(got[:, keep], cached[:, keep])  # outside the mouth: the input crop in both
    assert np.abs(got[:, ~keep].astype(int) - cached[:, ~keep]).max() > 0  # inside: the cache matters
