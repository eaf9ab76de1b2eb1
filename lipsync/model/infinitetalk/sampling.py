"""The authors' sampling recipe (``wan/multitalk.py`` ``generate_infinitetalk``), one chunk at a time.

Per chunk of F = 4n + 1 frames at output frame s (chunk k starts at k·(F − M), M motion frames):

1. condition: the reference frame (the chunk's first frame, in [−1, 1]) → CLIP tokens (224², bicubic, CLIP's
   normalisation, the tower without its last block); VAE latent of [reference, F − 1 zero frames]; the mask
   channels (4 per latent: frame 0 is 1, the rest 0) → y = [mask | latent];
2. motion latents: the VAE latent of the reference (first chunk: 1 latent) or of the previous chunk's last M
   decoded frames (later chunks: (M − 1)/4 + 1 latents); they are pinned into the noisy latent before every
   call and after every update;
3. noise (16, (F − 1)/4 + 1, H/8, W/8) from the request's CPU generator; later chunks also draw, once before the
   loop and once per step, the motion frames' re-noising that the authors make and at once overwrite, so a seed
   draws the authors' sequence;
4. timesteps linspace(1000, 1, S) + [0], shifted t' = s·t / (1 + (s − 1)·t) on t/1000;
5. per step: conditional, no-text (negative prompt) and no-text-no-audio (zero audio windows) predictions,
   v = uncond + g_text·(cond − no_text) + g_audio·(no_text − uncond) — or with g_text = 1 two passes,
   v = no_audio + g_audio·(cond − no_audio) with the prompt kept; x ← x − v·(t_i − t_{i+1})/1000;
6. decode (clamped to [−1, 1]); colour correction of the whole chunk to the first chunk's reference (Lab mean
   and deviation per frame, strength 1 by default).

The output of chunk 0 is all its frames; a later chunk's first M frames are the previous chunk's and dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from lipsync.model.infinitetalk.colour import match_colours
from lipsync.model.infinitetalk.config import SamplingConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def timesteps(steps: int, shift: float, num_train: int = 1000) -> torch.Tensor:
    """The shifted schedule, S + 1 float32 values from ~1000 to 0 (the authors' float32 arithmetic)."""
    t = torch.from_numpy(np.append(np.linspace(num_train, 1, steps, dtype=np.float32), np.float32(0.0)))
    t = t / num_train
    return shift * t / (1 + (shift - 1) * t) * num_train


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 → (1, 3, T, H, W) float32 in [−1, 1] (``/255``, ``(x − 0.5)·2``)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div(255).sub(0.5).mul(2)
    return x.permute(3, 0, 1, 2)[None]


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(1, 3, T, H, W) in [−1, 1] → (T, H, W, 3) uint8, truncated as the authors' writer."""
    x = ((video[0].clamp(-1, 1) + 1) / 2 * 255).permute(1, 2, 3, 0)
    return x.to(torch.uint8).numpy()


@dataclass
class Prompts:
    """umT5 states, zero-padded to ``text_len``: the prompt and the negative prompt."""

    text: torch.Tensor
    null: torch.Tensor


@dataclass
class ChunkResult:
    latents: torch.Tensor
    """(1, 16, T_lat, h, w) float32: the denoised latent."""
    video: torch.Tensor
    """(1, 3, F, H, W) float32 in [−1, 1] on the CPU, colour-corrected."""


class InfiniteTalkSampler:
    def __init__(self, transformer, vae, clip, sampling: SamplingConfig, *, device: str, dtype: torch.dtype):
        self.transformer, self.vae, self.clip = transformer, vae, clip
        self.sampling = sampling
        self.device, self.dtype = device, dtype
        cfg = vae.config
        self.latents_mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.latents_std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.trace: list[torch.Tensor] | None = None
        """Set to a list to keep every chunk's denoised latent (tests compare them with the recipe)."""

    # -------------------------------------------------------------------------------- components
    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(1, 3, T, H, W) in [−1, 1] → normalised latent mean (1, 16, (T−1)/4+1, H/8, W/8) float32."""
        vdtype = next(self.vae.parameters()).dtype
        mu = self.vae.encode(pixels.to(self.device, vdtype)).latent_dist.mode().float()
        return (mu - self.latents_mean.to(mu.device)) / self.latents_std.to(mu.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vdtype = next(self.vae.parameters()).dtype
        z = latents.float() * self.latents_std.to(latents.device) + self.latents_mean.to(latents.device)
        return self.vae.decode(z.to(vdtype)).sample.float().clamp(-1, 1).cpu()

    @torch.no_grad()
    def clip_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) in [−1, 1] → (1, tokens, width) from the tower without its last block."""
        size = self.clip.config.image_size
        x = torch.nn.functional.interpolate(image.float(), size=(size, size), mode="bicubic", align_corners=False)
        x = x.mul(0.5).add(0.5)
        x = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        cdtype = next(self.clip.parameters()).dtype
        return self.clip(pixel_values=x.to(self.device, cdtype)).last_hidden_state

    def condition(self, reference: torch.Tensor, frames: int, encoded: Callable | None = None) -> torch.Tensor:
        """y = [mask (4 ch) | VAE latent of the reference followed by zero frames] (1, 20, T_lat, h, w)."""
        _, c, _, h, w = reference.shape
        video = torch.cat([reference, torch.zeros(1, c, frames - 1, h, w)], dim=2)
        latent = _through(encoded, "condition", lambda: self.encode(video), self.device, torch.float32)
        t_lat, lh, lw = latent.shape[2:]
        mask = torch.zeros(1, 4, t_lat, lh, lw, device=latent.device)
        mask[:, :, 0] = 1
        return torch.cat([mask, latent], dim=1)

    # -------------------------------------------------------------------------------- one chunk
    @torch.no_grad()
    def chunk(self, reference: np.ndarray, motion: np.ndarray | None, windows: torch.Tensor, prompts: Prompts,
              generator: torch.Generator, colour_reference: np.ndarray | None,
              on_step: Callable[[int, int], None] | None = None, encoded: Callable | None = None) -> ChunkResult:
        """One chunk. reference (H, W, 3) uint8; motion (M, H, W, 3) float32 in [−1, 1] (the previous chunk's
        decoded, corrected last frames) or None for the first chunk; windows (F, 5, L, C); colour_reference
        (H, W, 3) in [−1, 1] (the first chunk's reference), None: no colour correction. ``encoded(name, compute)``:
        what the chunk computes from its reference frame alone (the CLIP tokens, the condition latent, the first
        chunk's motion latent) through the worker's video-side cache, None: computed."""
        s = self.sampling
        frames = windows.shape[0]
        ref = to_pixels(reference[None])  # (1, 3, 1, H, W)
        cdtype = next(self.clip.parameters()).dtype
        image_tokens = _through(encoded, "clip", lambda: self.clip_tokens(ref[:, :, 0]), self.device, cdtype)
        y = self.condition(ref, frames, encoded)
        if motion is None:  # the first chunk: the reference is its motion frame (from the video alone)
            motion_latent = _through(encoded, "motion", lambda: self.encode(ref), self.device, torch.float32)
        else:
            motion_latent = self.encode(torch.from_numpy(motion).permute(3, 0, 1, 2)[None])
        m = motion_latent.shape[2]
        t_lat, lh, lw = y.shape[2:]
        latent = torch.randn((16, t_lat, lh, lw), generator=generator, dtype=torch.float32)[None].to(self.device)
        schedule = timesteps(s.steps, s.sample_shift, s.num_train_timesteps)
        if motion is not None:
            torch.randn(motion_latent.shape[1:], generator=generator)  # the authors' overwritten re-noising draw
        audio = windows[None].to(self.device)
        silent = torch.zeros_like(audio)
        two_pass = math.isclose(s.text_guidance, 1.0)
        one_pass = two_pass and math.isclose(s.audio_guidance, 1.0)
        for i in range(s.steps):
            latent[:, :, :m] = motion_latent
            x = torch.cat([latent, y], dim=1).to(self.dtype)
            t = schedule[i : i + 1].to(self.device)

            def predict(text: torch.Tensor, sound: torch.Tensor) -> torch.Tensor:
                return self.transformer(x, t, text.to(self.device, self.dtype), image_tokens.to(self.dtype),
                                        sound.to(self.dtype))

            cond = predict(prompts.text, audio)
            if one_pass:  # both scales 1: the guided sum is the conditional prediction itself
                v = cond
            elif two_pass:
                no_audio = predict(prompts.text, silent)
                v = no_audio + s.audio_guidance * (cond - no_audio)
            else:
                no_text = predict(prompts.null, audio)
                uncond = predict(prompts.null, silent)
                v = uncond + s.text_guidance * (cond - no_text) + s.audio_guidance * (no_text - uncond)
            dt = (schedule[i] - schedule[i + 1]) / s.num_train_timesteps
            latent = latent + (-v) * dt.to(self.device)
            if motion is not None:
                torch.randn(motion_latent.shape[1:], generator=generator)  # overwritten at once, as theirs
            latent[:, :, :m] = motion_latent
            if on_step is not None:
                on_step(i + 1, s.steps)
        video = self.decode(latent)
        if colour_reference is not None and s.colour_correction > 0:
            corrected = match_colours(video[0].permute(1, 2, 3, 0).numpy(), colour_reference, s.colour_correction)
            video = torch.from_numpy(corrected).permute(3, 0, 1, 2)[None]
        result = ChunkResult(latents=latent.float().cpu(), video=video)
        if self.trace is not None:
            self.trace.append(result.latents)
        return result


def _through(encoded: Callable | None, name: str, compute: Callable[[], torch.Tensor], device,
             dtype: torch.dtype) -> torch.Tensor:
    """``compute()``, or through the video-side cache: a cached value (an ndarray of the same values; bf16 kept
    as float32) comes back as the computed tensor was, on ``device`` in ``dtype``."""
    if encoded is None:
        return compute()
    return torch.as_tensor(encoded(name, compute)).to(device, dtype)


def chunk_starts(num_frames: int, frame_num: int, motion: int) -> list[int]:
    """The authors' loop: chunk k starts at k·(F − M); a next chunk is made while the last one ends before the
    timeline does."""
    starts = [0]
    while starts[-1] + frame_num < num_frames:
        starts.append(starts[-1] + frame_num - motion)
    return starts
