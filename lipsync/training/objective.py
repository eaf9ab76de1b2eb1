"""The training objective, built from the same functions inference uses (``lipsync/model/pipio/pipeline.py``).

One training example is one frame block of one clip, conditioned exactly as ``LipSyncPipeline.__call__``
conditions a block:

- the block: ``ceil(frame_block_width / 8)`` latent frames, either from the start of the clip or starting
  mid-video; its latents are the *chunk-encoded clip's* latents (``encode_chunked`` over the same chunk plan
  as inference, on the sub-range of whole chunks that determines them, so they equal the whole-clip encode);
- the condition: ``encode_condition`` of the masked frames (grey where regenerated) + the pooled latent mask,
  with masks of the kinds inference builds: the mouth mask (lip-sync), the lower face, whole generated frames
  (timeline additions and bridges) and every frame generated from one still (image input);
- RoPE coordinates on the clip's global timeline (``latent_coords``), audio windows from the whole clip's
  Whisper features (``encode_audio_windows``) sliced to the block, references encoded by
  ``encode_reference_frames`` and placed relative to the block (``place_references``), drawn away from the
  block's frames so the mouth cannot be copied, with inference's key bias ``log(strength / n)``;
- face-ID at inference's scale ``strength / 8`` (4 for mouth inpainting, 8 for generated frames);
- dropout: null (zero) audio, as audio guidance's unconditional pass, and no face-ID;
- the loss: flow matching on ``x_sigma = (1 - sigma) x0 + sigma eps`` with velocity target ``eps - x0`` (what
  ``FlowMatchEulerDiscreteScheduler.step`` integrates), sigma drawn then shifted by the scheduler's own
  ``time_shift`` with inference's ``mu`` for the block length, timestep ``sigma * num_train_timesteps``;
  squared error weighted ``mouth_loss_weight`` inside the latent mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from lipsync.media.masks import lower_face_mask
from lipsync.model.pipio.autoencoder_lipsync import ChunkPlan, encode_chunked, normalize_latents, plan_chunks
from lipsync.model.pipio.frame_blocks import plan_frame_blocks
from lipsync.model.pipio.conditioning import (
    FrameSource, encode_audio_windows, encode_condition, encode_reference_frames, latent_coords, pack_latents, place_references, shift_mu,
)
from lipsync.model.pipio.pipeline import LipSyncPipeline
from lipsync.model.pipio.transformer_lipsync import LipSyncConditioning, reference_logit_bias
from lipsync.training.shards import ClipSample

MASK_KINDS = ("mouth", "lower_face", "generate_span", "image")


@dataclass(frozen=True)
class ObjectiveConfig:
    """What one example looks like and how it is weighted.

    Args:
        frame_block_width: pixel frames per block, as inference's ``frame_block_width`` knob (136 -> 17 latents).
        vae_chunk_size / vae_overlap_window_width: the chunked VAE encode, as inference's knobs.
        mask_kinds: probability of each mask kind (``mouth``, ``lower_face``, ``generate_span``, ``image``).
        mid_video: probability that a block starts mid-video (when the clip is longer than a block).
        reference_gap_frames: references come from frames at least this far from the block's frames.
        max_appearance_strength: ``appearance_cond_strength`` is drawn from 1..this.
        audio_dropout / face_id_dropout: probabilities of null audio and of no face-ID.
        face_id_strengths: the strengths inference's ``-1`` rule uses (mouth inpainting, generated frames).
        mouth_loss_weight: loss weight inside the latent mask (1 outside).
        sigma_sampling: ``logit_normal`` (SD3's) or ``uniform``; logit_mean / logit_std its parameters.
    """

    frame_block_width: int = 136
    vae_chunk_size: int = 65
    vae_overlap_window_width: int = 16
    mask_kinds: dict[str, float] = field(default_factory=lambda: {"mouth": 0.75, "lower_face": 0.1,
                                                                  "generate_span": 0.1, "image": 0.05})
    mid_video: float = 0.5
    reference_gap_frames: int = 8
    max_appearance_strength: int = 4
    audio_dropout: float = 0.1
    face_id_dropout: float = 0.2
    face_id_strengths: tuple[int, int] = (4, 8)
    mouth_loss_weight: float = 4.0
    sigma_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0

    def __post_init__(self):
        unknown = set(self.mask_kinds) - set(MASK_KINDS)
        if unknown or not self.mask_kinds or min(self.mask_kinds.values()) < 0:
            raise ValueError(f"objective.mask_kinds: kinds must be among {MASK_KINDS} with weights >= 0, got "
                             f"{self.mask_kinds}")
        if self.sigma_sampling not in ("logit_normal", "uniform"):
            raise ValueError(f"objective.sigma_sampling must be logit_normal or uniform, got {self.sigma_sampling!r}")


@dataclass
class Example:
    """One block ready for the transformer (everything but the noise), on the training device."""

    x0: torch.Tensor  # (1, N, C) clean normalised latents of the block
    cond: torch.Tensor  # (1, N, C + 1) masked latents + latent mask
    video_coords: torch.Tensor  # (1, 3, N) global timeline
    num_frames: int  # latent frames in the block
    conditioning: LipSyncConditioning
    mu: float
    info: dict  # what was drawn (for logs and tests)

    @property
    def latent_mask(self) -> torch.Tensor:
        return self.cond[..., -1:]


class EncodeCache:
    """Frozen-encoder outputs kept between steps (least recently used first out), for data sets small enough
    to revisit the same blocks: the masked/clean latents of a (clip, range, deterministic mask kind), the audio
    windows of a (clip, block end), and each reference frame's tokens. ``max_items`` 0 disables it."""

    def __init__(self, max_items: int = 0):
        from collections import OrderedDict

        self.max_items, self.items = max_items, OrderedDict()
        self.hits = self.misses = 0

    def get(self, key, compute):
        if self.max_items <= 0:
            return compute()
        if key in self.items:
            self.hits += 1
            self.items.move_to_end(key)
            return self.items[key]
        self.misses += 1
        value = self.items[key] = compute()
        while len(self.items) > self.max_items:
            self.items.popitem(last=False)
        return value


def draw_window(num_latent: int, block: int, rng: np.random.Generator, mid_video: float) -> tuple[int, int]:
    """Global latent frames [g0, g1) of the block: the whole clip if it is shorter than a block, else a block at
    the start or (probability ``mid_video``) at a random later latent frame."""
    if num_latent <= block:
        return 0, num_latent
    if rng.random() < mid_video:
        g0 = int(rng.integers(1, num_latent - block + 1))
        return g0, g0 + block
    return 0, block


def chunk_range(padded_frames: int, chunk_size: int, overlap: int, g0: int, g1: int, ratio: int = 8
                ) -> tuple[int, int]:
    """Pixel frames [lo, hi) of whole chunks (inference's plan for the clip) whose chunked encode gives latents
    g0..g1-1 exactly as the whole clip's: from the last chunk that starts early enough for g0 to lie past its
    blend with the chunk before, to the end of every chunk that reaches g1 - 1."""
    starts = ChunkPlan(padded_frames, chunk_size, overlap).starts
    first = max(i for i, s in enumerate(starts) if i == 0 or s // ratio + overlap // ratio + 1 <= g0)
    last = max(i for i, s in enumerate(starts) if s <= ratio * max(g1 - 1, 0))
    return starts[first], min(padded_frames, starts[last] + chunk_size)


def draw_masks(sample: ClipSample, lo: int, hi: int, kind: str, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """(pixel masks (n, S, S) float32, generate (n,) bool) for clip frames [lo, hi) (clamped at the end)."""
    idx = np.minimum(np.arange(lo, hi), sample.num_frames - 1)
    size = sample.crops.shape[1]
    generate = np.zeros(len(idx), bool)
    if kind == "lower_face":
        masks = np.repeat(lower_face_mask(size)[None], len(idx), axis=0).astype(np.float32)
    elif kind == "image":
        masks = np.zeros((len(idx), size, size), np.float32)  # the engine's masks for a still: all generated
        generate[:] = True
    else:
        masks = sample.mouth[idx].astype(np.float32) / 255.0
        if kind == "generate_span":  # a timeline addition or bridge: a run of whole generated frames
            length = int(rng.integers(1, max(2, len(idx) // 2)))
            start = int(rng.integers(0, len(idx) - length + 1))
            generate[start : start + length] = True
    return masks, generate


def draw_references(sample: ClipSample, lo: int, hi: int, count: int, gap: int, rng: np.random.Generator
                    ) -> tuple[np.ndarray, str]:
    """Indices of ``count`` (or fewer) face frames away from clip frames [lo, hi): at least ``gap`` frames off
    if the clip allows, else anywhere outside, else (a clip no longer than the block) the farthest frames."""
    faces = np.flatnonzero(sample.present)
    if len(faces) == 0:
        return faces, "none"
    distance = np.maximum(lo - faces, faces - (hi - 1))  # > 0 outside [lo, hi)
    for rule, pool in (("gap", faces[distance >= gap]), ("outside", faces[distance > 0])):
        if len(pool):
            return np.sort(rng.choice(pool, size=min(count, len(pool)), replace=False)), rule
    far = faces[np.argsort(-np.abs(faces - (lo + hi - 1) / 2), kind="stable")[:count]]
    return np.sort(far), "inside"


def flow_sigmas(pipe: LipSyncPipeline, u: torch.Tensor, mu: float) -> torch.Tensor:
    """Uniform-in-(0, 1] draws -> training sigmas shifted exactly as ``set_timesteps(sigmas=..., mu=mu)``
    shifts the sampling sigmas (the scheduler's own ``time_shift``)."""
    return pipe.scheduler.time_shift(mu, 1.0, u)


@torch.no_grad()
def build_example(pipe: LipSyncPipeline, sample: ClipSample, cfg: ObjectiveConfig, text: torch.Tensor,
                  text_mask: torch.Tensor, rng: np.random.Generator, device: torch.device,
                  dtype: torch.dtype = torch.float32, cache: EncodeCache | None = None) -> Example:
    """Frozen encoders (VAE, Whisper) on one drawn block of ``sample`` (or their cached outputs); ``text`` is
    the constant prompt's embedding, computed once."""
    cache = cache or EncodeCache(0)
    pcfg, vae = pipe.config, pipe.vae
    rt, rs = vae.temporal_compression_ratio, vae.spatial_compression_ratio
    fps = sample.fps
    padded = (sample.num_frames - 1 + rt - 1) // rt * rt + 1
    num_latent = (padded - 1) // rt + 1
    block = plan_frame_blocks(num_latent, cfg.frame_block_width, rt)[0].end  # latent frames per block (as inference)
    g0, g1 = draw_window(num_latent, block, rng, cfg.mid_video)
    plan, _ = plan_chunks(padded, cfg.vae_chunk_size, cfg.vae_overlap_window_width, rt)
    lo, hi = chunk_range(padded, plan.chunk_size, plan.overlap, g0, g1, rt)
    kinds = list(cfg.mask_kinds)
    p = np.asarray([cfg.mask_kinds[k] for k in kinds], dtype=np.float64)
    kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
    masks, generate = draw_masks(sample, lo, hi, kind, rng)
    frames = sample.crops[np.minimum(np.arange(lo, hi), sample.num_frames - 1)]

    # Condition and target: the chunk-encoded range, sliced to the block (global latent g = lo / 8 + j)
    masked_source = FrameSource(frames, masks, generate, rt, rs)

    def encode_range():
        cond = encode_condition(vae, masked_source, plan.chunk_size, plan.overlap, device, dtype)
        clean_source = FrameSource(frames, np.zeros_like(masks), np.zeros_like(generate), rt, rs)
        clean = encode_chunked(vae, lambda s, e: clean_source.read_masked(s, e, device, dtype), len(frames),
                               plan.chunk_size, plan.overlap)
        return pack_latents(normalize_latents(vae, clean.float())), cond

    x0, cond = (encode_range() if kind == "generate_span"  # (its span is random: not worth keeping)
                else cache.get(("range", sample.key, lo, hi, kind), encode_range))
    hw = masked_source.latent_height * masked_source.latent_width
    j0, j1 = g0 - lo // rt, g1 - lo // rt
    x0, cond = x0[:, j0 * hw : j1 * hw], cond[:, j0 * hw : j1 * hw]
    video_coords = latent_coords(g1, masked_source.latent_height, masked_source.latent_width, fps, rt, rs,
                                 device)[:, :, g0 * hw : g1 * hw]

    # Audio: the whole clip's features up to the block (Whisper windows from 0, as inference), sliced
    audio = cache.get(("audio", sample.key, g1), lambda: encode_audio_windows(
        pipe.audio_encoder, sample.audio, (g1 - 1) * rt + 1, g1, fps, pcfg, pipe.transformer.config.audio_steps_per_frame,
        rt))[g0:g1][None]
    audio_dropped = bool(rng.random() < cfg.audio_dropout)
    if audio_dropped:
        audio = torch.zeros_like(audio)

    # References away from the block's pixel frames ([8 g0 - 7, 8 g1 - 7)), inference's encoding and bias
    strength = int(rng.integers(1, cfg.max_appearance_strength + 1))
    block_lo, block_hi = max(0, g0 * rt - (rt - 1)), min(sample.num_frames, (g1 - 1) * rt + 1)
    wanted = 1 if kind == "image" else min(strength, pcfg.max_reference_frames)
    ref_idx, ref_rule = draw_references(sample, block_lo, block_hi, wanted, cfg.reference_gap_frames, rng)
    references = reference_coords = None
    bias = 0.0
    if len(ref_idx):
        per_frame = [cache.get(("reference", sample.key, int(i)), lambda i=i: encode_reference_frames(
            vae, sample.crops[i : i + 1], pcfg.reference_time_seconds, device, dtype)) for i in ref_idx]
        references = torch.cat([tokens for tokens, _ in per_frame], dim=1)
        reference_coords = torch.cat([coords for _, coords in per_frame], dim=2)
        reference_coords = place_references(reference_coords, video_coords, 0)
        bias = reference_logit_bias(strength, len(ref_idx))

    # Face-ID at inference's strengths, with dropout
    id_strength = 0
    id_embeds = None
    if sample.faceid is not None and sample.faceid.shape == (pipe.transformer.config.id_embed_dim,) \
            and rng.random() >= cfg.face_id_dropout:
        id_strength = cfg.face_id_strengths[1] if generate.any() else cfg.face_id_strengths[0]
        id_embeds = torch.as_tensor(sample.faceid, dtype=torch.float32, device=device)[None]

    conditioning = LipSyncConditioning(text=text, text_mask=text_mask, audio=audio.to(device), id_embeds=id_embeds,
                                       id_scale=id_strength / 8.0, references=references,
                                       reference_coords=reference_coords, reference_bias=bias)
    info = {"kind": kind, "g0": g0, "g1": g1, "chunk_range": (lo, hi), "references": ref_idx.tolist(),
            "reference_rule": ref_rule, "audio_dropped": audio_dropped, "face_id_strength": id_strength,
            "appearance_strength": strength}
    return Example(x0=x0, cond=cond, video_coords=video_coords, num_frames=g1 - g0, conditioning=conditioning,
                   mu=shift_mu(pipe.scheduler.config, (g1 - g0) * hw), info=info)


def draw_sigma(pipe: LipSyncPipeline, cfg: ObjectiveConfig, mu: float, generator: torch.Generator) -> torch.Tensor:
    if cfg.sigma_sampling == "logit_normal":
        u = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(1, generator=generator))
    else:
        u = 1.0 - torch.rand(1, generator=generator)  # (0, 1]
    return flow_sigmas(pipe, u.double(), mu).float()


def flow_matching_loss(transformer: torch.nn.Module, pipe: LipSyncPipeline, example: Example,
                       cfg: ObjectiveConfig, generator: torch.Generator, ff_num_splits: int = 1) -> torch.Tensor:
    """Weighted velocity MSE of ``transformer`` (possibly wrapped by accelerate/peft) on one example."""
    x0 = example.x0
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    sigma = draw_sigma(pipe, cfg, example.mu, generator).to(x0.device)
    noisy = (1.0 - sigma) * x0 + sigma * noise
    target = noise - x0
    timestep = sigma * pipe.scheduler.config.num_train_timesteps
    pred = transformer(noisy, example.cond, timestep, example.video_coords, example.num_frames, example.conditioning,
                       ff_num_splits=ff_num_splits).float()
    weight = 1.0 + (cfg.mouth_loss_weight - 1.0) * example.latent_mask.float()
    return (weight * (pred - target) ** 2).sum() / (weight.sum() * x0.shape[-1])


def example_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """Every draw of an example depends only on (seed, optimizer step, micro-step, rank): a resumed run draws
    exactly what the uninterrupted run drew."""
    return int(np.random.SeedSequence([seed, step, micro, rank]).generate_state(1)[0])


__all__ = ["ObjectiveConfig", "Example", "build_example", "flow_matching_loss", "flow_sigmas", "chunk_range",
           "draw_window", "EncodeCache", "draw_masks", "draw_references", "example_seed", "MASK_KINDS"]
