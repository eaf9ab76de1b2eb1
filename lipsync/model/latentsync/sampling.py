"""LatentSync's sampling recipe over 16-frame segments (``latentsync/pipelines/lipsync_pipeline.py``), on
aligned face crops.

For a request (seed s): one generator on the device, seeded with s. Its first draw is the initial noise, one
(1, 4, 1, h, w) latent repeated over every frame of the video. Then, segment after segment: the crops in
[-1, 1]; the masked crops (crops x mask); the mask nearest-resized to the latent size; VAE posterior *samples*
of the masked crops, then of the crops themselves (the reference) — each one draw of the segment's shape from
the same generator — times 0.18215; DDIM (eta 0) over the steps with the UNet fed
``[noisy latent, mask, masked latent, reference latent]`` and, when guidance > 1, a batch of zeros-audio and
audio whose noise predictions combine as ``uncond + g (audio - uncond)``; decode (/ 0.18215); output
``decoded (1 - mask) + crop (1 - (1 - mask))`` (the published rounding), in pixel units as float32
(``(x / 2 + 0.5) * 255``, neither clamped nor rounded): the published restore (``restore_video``) resizes and warps
the float face and clamps and truncates once, at the end (``lipsync.media.paste``); ``to_uint8`` of the same
values is the published ``pixel_values_to_images`` (clamped, truncated).

Several segments of the same length can go through the UNet together (``segments_per_call``): each segment is
its own batch item, so every norm and attention sees exactly the frames it would see alone; the draws keep
the published order.

DeepCache (``deep_cache_interval`` 3, the published ``--enable_deepcache``): the UNet runs whole on every third
step of a segment and only its shallow branch in between (``lipsync.model.latentsync.unet.DeepCache``); 1 runs
every step whole. ``vae_batch`` only cuts the VAE's work into batches; the posterior is sampled once per
segment as published.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from lipsync.model.latentsync.unet import DeepCache

VAE_SCALE = 0.18215
VAE_SHIFT = 0.0


@dataclass
class SegmentInput:
    crops: np.ndarray
    """(n, S, S, 3) uint8 aligned crops."""
    audio: torch.Tensor
    """(n, tokens, dim) audio tokens of the segment's frames."""
    encoded: Callable | None = None
    """``encoded(name, compute)``: the segment's VAE posterior moments (``masked``, ``reference``) through the
    worker's video-side cache (``EngineRequest.encoder_output``); None: computed."""


class LatentSyncSampler:
    """The models and the fixed parts of the recipe (mask, scheduler config); one ``run`` per request."""

    def __init__(self, unet, vae, scheduler_config: dict, mask: np.ndarray, *, device: str, dtype: torch.dtype,
                 deep_cache_interval: int = 1):
        self.unet, self.vae = unet, vae
        self.deep_cache_interval = max(1, int(deep_cache_interval))
        self.scheduler_config = dict(scheduler_config)
        self.device, self.dtype = torch.device(device), dtype
        self.mask = torch.from_numpy(mask.astype(np.float64))  # float64, as the published mask image loads
        self.size = int(mask.shape[0])
        self.latent_size = self.size // 8

    def run(self, *, seed: int, steps: int, guidance_scale: float, vae_batch: int) -> "SamplingRun":
        return SamplingRun(self, seed=seed, steps=steps, guidance_scale=guidance_scale, vae_batch=vae_batch)


class SamplingRun:
    def __init__(self, sampler: LatentSyncSampler, *, seed: int, steps: int, guidance_scale: float, vae_batch: int):
        self.s = sampler
        self.generator = torch.Generator(device=sampler.device).manual_seed(int(seed))
        self.guidance_scale = float(guidance_scale)
        self.vae_batch = max(1, int(vae_batch))
        self.scheduler = DDIMScheduler.from_config(sampler.scheduler_config)
        self.scheduler.set_timesteps(steps, device=sampler.device)
        h = sampler.latent_size
        channels = sampler.vae.config.latent_channels
        self.noise = torch.randn((1, channels, 1, h, h), generator=self.generator, device=sampler.device,
                                 dtype=sampler.dtype) * self.scheduler.init_noise_sigma

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1.0

    # ------------------------------------------------------------------------------------------ pieces
    def _vae_sample(self, pixels: torch.Tensor, encoded: Callable | None = None, name: str = "") -> torch.Tensor:
        """VAE posterior sample of (n, 3, S, S), drawn once for the whole segment, scaled."""
        def moments() -> torch.Tensor:
            return torch.cat([self.s.vae.encode(pixels[i : i + self.vae_batch]).latent_dist.parameters
                              for i in range(0, len(pixels), self.vae_batch)])

        parameters = moments() if encoded is None else \
            torch.as_tensor(encoded(name, moments)).to(self.s.device, self.s.dtype)  # a computed tensor unchanged
        dist = DiagonalGaussianDistribution(parameters)
        return (dist.sample(generator=self.generator) - VAE_SHIFT) * VAE_SCALE

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents / VAE_SCALE + VAE_SHIFT
        return torch.cat([self.s.vae.decode(latents[i : i + self.vae_batch]).sample
                          for i in range(0, len(latents), self.vae_batch)])

    def _conditions(self, crops: np.ndarray, encoded: Callable | None = None):
        """Pixels in [-1, 1], the 1-channel repaint weight (1 - mask) at S, and the (1, 9, n, h, w) mask + masked +
        reference latents."""
        s = self.s
        # contiguous (n, 3, S, S), as the published faces are stacked: a channels-last view takes another
        # convolution kernel in the VAE encoder (one uint8 level apart after 20 steps)
        pixels = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).contiguous() / 255.0
        pixels = (pixels - 0.5) / 0.5
        masked = (pixels * s.mask).to(device=s.device, dtype=s.dtype)  # float64 product, then the model's dtype
        mask = s.mask[None, None].expand(len(crops), 1, s.size, s.size)
        mask_latent = F.interpolate(mask, size=(s.latent_size, s.latent_size)).to(device=s.device, dtype=s.dtype)
        masked_latent = self._vae_sample(masked, encoded, "masked")
        pixels = pixels.to(device=s.device, dtype=s.dtype)
        reference_latent = self._vae_sample(pixels, encoded, "reference")
        cond = torch.cat([mask_latent, masked_latent, reference_latent], dim=1)  # (n, 9, h, w)
        # the published paste_surrounding_pixels_back(decoded, pixels, 1 - masks): 1 - mask in float64, then the
        # model's dtype, and the reference weighted by 1 - that (not the mask itself: they round apart)
        repaint = (1 - mask).to(device=s.device, dtype=s.dtype)
        return pixels, repaint, cond.permute(1, 0, 2, 3)[None]

    # ------------------------------------------------------------------------------------------ segments
    @torch.no_grad()
    def segments(self, items: Sequence[SegmentInput], on_step: Callable[[int, int], None] | None = None):
        """Generate k segments of the same length together; returns k (n, S, S, 3) float32 arrays in pixel units
        (``to_pixels``)."""
        n = len(items[0].crops)
        if any(len(it.crops) != n for it in items):
            raise ValueError("segments batched together must have the same length")
        s = self.s
        prepared = [self._conditions(it.crops, it.encoded) for it in items]  # draws in the published order
        cond = torch.cat([p[2] for p in prepared])
        audio = torch.cat([it.audio for it in items]).to(device=s.device, dtype=s.dtype)
        if self.guided:
            cond = torch.cat([cond, cond])
            audio = torch.cat([torch.zeros_like(audio), audio])
        latents = self.noise.expand(len(items), -1, n, -1, -1).clone()
        timesteps = self.scheduler.timesteps
        cache = DeepCache(s.deep_cache_interval) if s.deep_cache_interval > 1 else None
        for j, t in enumerate(timesteps):
            x = torch.cat([latents, latents]) if self.guided else latents
            x = torch.cat([self.scheduler.scale_model_input(x, t), cond], dim=1)
            noise = s.unet(x, t, audio, cache.at_step(j) if cache is not None else None)
            if self.guided:
                uncond, cond_noise = noise.chunk(2)
                noise = uncond + self.guidance_scale * (cond_noise - uncond)
            latents = self.scheduler.step(noise, t, latents, eta=0.0, generator=self.generator).prev_sample
            if on_step is not None:
                on_step(j + 1, len(timesteps))
        outputs = []
        for k, (pixels, repaint, _) in enumerate(prepared):
            decoded = self._decode(latents[k].permute(1, 0, 2, 3))
            combined = decoded * repaint + pixels * (1 - repaint)
            outputs.append(to_pixels(combined))
        return outputs


def to_pixels(pixels: torch.Tensor) -> np.ndarray:
    """(n, 3, S, S) in [-1, 1] -> (n, S, S, 3) float32 in pixel units, ``(x / 2 + 0.5) * 255``, unclamped: what the
    engine hands the paste (``lipsync.media.paste``), which clamps and truncates after the restore's resampling."""
    return ((pixels.float() / 2 + 0.5) * 255).permute(0, 2, 3, 1).cpu().numpy()


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(n, 3, S, S) in [-1, 1] -> (n, S, S, 3) uint8, as published (scaled, clamped, truncated): the same as
    ``lipsync.media.paste.as_uint8(to_pixels(pixels))``."""
    images = ((pixels.float() / 2 + 0.5).clamp(0, 1) * 255).to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()
