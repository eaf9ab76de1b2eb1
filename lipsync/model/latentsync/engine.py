"""The LatentSync engine (1.6 at 512², 1.5 at 256², or a folder's own ``unet_config.yaml``) behind the engine
interface.

- Faces: the published template alignment (``crop_rule.align_track``) and its two-stage crop; paste-back through
  the published restore mask (the whole crop, eroded and feathered).
- ``generate`` pulls the worker's crops as it needs them, cut into 16-frame segments (fixed by training: the
  temporal layers and the UNet's GroupNorms span a segment), runs ``segments_per_call`` segments per UNet call
  and yields each call's frames: memory is flat in the video's length. Cancel (``request.progress`` raising)
  takes effect between denoising steps.
- Knobs: ``seed`` seeds the noise; ``frame_block_width`` is frames per UNet call, in whole segments
  (``max(1, frame_block_width // 16)``), capped by memory (``max_segments_per_call``: the schema's default 136
  would ask 8 segments, ~40 GB of activations at 512² in fp16); ``vae_chunk_size`` is the VAE's batch; ``feed_forward_num_splits``
  chunks the feed-forward layers. ``vae_overlap_window_width``, ``face_id_cond_strength``,
  ``appearance_cond_strength`` and a custom prompt have no counterpart in this model: accepted, said in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipsync.media.faces import FaceTrack
from lipsync.model.devices import configure_backends, resolve_dtype, torch_dtype
from lipsync.model.engine import CropBatch, EngineInfo, EngineOptions, EngineRequest
from lipsync.model.latentsync import crop_rule
from lipsync.model.latentsync.config import LatentSyncConfig, folder_config, scheduler_config
from lipsync.model.weights import WeightsFolderError, WeightsLayout

log = logging.getLogger(__name__)

UNUSED_KNOBS = ("vae_overlap_window_width", "face_id_cond_strength", "appearance_cond_strength")
ACTIVATION_BYTES_PER_FRAME = 0.305e9
"""Peak activation memory of the 1.6 UNet per frame and per batch item at 64² latents in fp32, measured
(``scripts/bench_latentsync.py``: 0.61 GB for a guided call of one frame); scaled by latent area and dtype."""
MEMORY_HEADROOM = 0.8
"""Share of the accelerator's free memory (after loading) that batched segments may take."""


def max_segments_per_call(device: str, config: LatentSyncConfig, itemsize: int, guided: bool) -> tuple[int, str]:
    """How many 16-frame segments one UNet call may batch, and why. A CPU gains no speed from batching
    segments, only memory: 1. On CUDA: as many as fit in ``MEMORY_HEADROOM`` of the free memory."""
    if not device.startswith("cuda"):
        return 1, "on a CPU batching segments gains nothing"
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    per_segment = (ACTIVATION_BYTES_PER_FRAME * (config.latent_size / 64) ** 2 * itemsize / 4
                   * config.num_frames * (2 if guided else 1))
    cap = max(1, int(MEMORY_HEADROOM * free // per_segment))
    return cap, f"~{per_segment / 1e9:.1f} GB of activations a segment, {free / 1e9:.0f} GB free"


class LatentSyncEngine:
    def __init__(self, config: LatentSyncConfig, unet, vae, whisper, info: EngineInfo, *, device: str, dtype,
                 steps: int, guidance_scale: float):
        from lipsync.model.latentsync.sampling import LatentSyncSampler

        self.config = config
        self.info = info
        self.unet, self.whisper = unet, whisper
        self.steps, self.guidance_scale = steps, guidance_scale
        self.size = config.resolution
        self.max_segments, self._cap_reason = max_segments_per_call(device, config, dtype.itemsize,
                                                                     guidance_scale > 1.0)
        self.sampler = LatentSyncSampler(unet, vae, scheduler_config(), crop_rule.mouth_mask(self.size), device=device,
                                         dtype=dtype)
        self._restore = crop_rule.restore_mask(self.size)

    # ---------------------------------------------------------------------------------------- face rule
    def face_affines(self, track: FaceTrack) -> np.ndarray:
        return crop_rule.align_track(track.landmarks, track.present, self.size)

    def crop(self, frames: np.ndarray, affines: np.ndarray) -> np.ndarray:
        out = np.zeros((len(frames), self.size, self.size, 3), np.uint8)
        for k, (frame, m) in enumerate(zip(frames, affines)):
            if np.isfinite(m).all():
                out[k] = crop_rule.crop_aligned(frame, m, self.size)
        return out

    def blend_masks(self, request: EngineRequest, start: int, landmarks: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self._restore, (len(landmarks), self.size, self.size)).copy()

    # ---------------------------------------------------------------------------------------- forward
    def generate(self, request: EngineRequest, batches: Iterable[CropBatch]) -> Iterator[np.ndarray]:
        from lipsync.model.latentsync.audio import AudioFeatures

        k = request.knobs
        seg_len = self.config.num_frames
        asked = max(1, k.frame_block_width // seg_len)
        per_call = min(asked, self.max_segments)
        self.unet.set_feed_forward_splits(k.feed_forward_num_splits)
        num_segments = -(-request.num_frames // seg_len)
        request.metrics.update(num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                               segment_frames=seg_len, segments=num_segments, segments_per_call=per_call,
                               vae_batch=k.vae_chunk_size, feed_forward_num_splits=k.feed_forward_num_splits,
                               seed=k.seed)
        request.log(f"LatentSync ({self.info.name}): {request.num_frames} frames in {num_segments} segments of "
                    f"{seg_len} (fixed by training), {per_call} segment(s) per UNet call (frame_block_width "
                    f"{k.frame_block_width}" + (f" asks {asked}; capped: {self._cap_reason}" if per_call < asked
                                                else "") + f"), {self.steps} DDIM steps, audio guidance {self.guidance_scale:g}, seed "
                    f"{k.seed}")
        unused = [f"{name}={getattr(k, name)}" for name in UNUSED_KNOBS]
        if k.prompt:
            unused.append("custom_prompt")
        request.log(f"LatentSync has no mechanism for {', '.join(unused)}: accepted, not used")

        audio = AudioFeatures(self.whisper, request.audio, request.fps, self.config.audio_feat_length)
        run = self.sampler.run(seed=k.seed, steps=self.steps, guidance_scale=self.guidance_scale,
                               vae_batch=k.vae_chunk_size)
        pending: list[Segment] = []
        done = 0
        for segment in _segments(batches, seg_len):
            if pending and len(segment.crops) != len(pending[0].crops):  # a short last segment goes alone
                yield from self._call(request, run, audio, pending, done, num_segments)
                done, pending = done + len(pending), []
            pending.append(segment)
            if len(pending) == per_call:
                yield from self._call(request, run, audio, pending, done, num_segments)
                done, pending = done + len(pending), []
        if pending:
            yield from self._call(request, run, audio, pending, done, num_segments)

    def _call(self, request, run, audio, group: list["Segment"], done: int, total: int) -> Iterator[np.ndarray]:
        from lipsync.model.latentsync.sampling import SegmentInput

        todo = [g for g in group if g.present.any()]  # a segment without any face is passed through
        first, last = group[0].start, group[-1].start + len(group[-1].crops) - 1
        results: dict[int, np.ndarray] = {}
        if todo:
            stage = f"denoising frames {first}-{last} (segments {done + 1}-{done + len(group)} of {total}), step"
            outs = run.segments([SegmentInput(g.crops, audio.frames(g.start, len(g.crops))) for g in todo],
                                on_step=lambda step, steps: request.progress(stage, step, steps))
            results = {g.start: o for g, o in zip(todo, outs)}
        for g in group:
            out = results.get(g.start, g.crops)
            if g.start in results and not g.present.all():  # frames without a face keep their input crop
                out = np.where(g.present[:, None, None, None], out, g.crops)
            yield out


@dataclass
class Segment:
    start: int
    crops: np.ndarray
    present: np.ndarray


def _segments(batches: Iterable[CropBatch], seg_len: int) -> Iterator[Segment]:
    """Segments of ``seg_len`` frames (the last may be shorter), pulled from the worker's batches lazily."""
    crops: list[np.ndarray] = []
    present: list[np.ndarray] = []
    have = start = 0
    for batch in batches:
        crops.append(batch.crops)
        present.append(batch.present)
        have += len(batch)
        while have >= seg_len:
            c, p = np.concatenate(crops), np.concatenate(present)
            yield Segment(start, c[:seg_len], p[:seg_len])
            start, have = start + seg_len, have - seg_len
            crops, present = [c[seg_len:]], [p[seg_len:]]
    if have:
        yield Segment(start, np.concatenate(crops), np.concatenate(present))


def _check_steps(steps: int) -> None:
    """DDIM ("leading" spacing, offset 1) must land on training timesteps: at most 999 of the 1000."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(scheduler_config())
    ok = steps >= 1
    if ok:
        try:
            scheduler.set_timesteps(steps)
            ok = int(scheduler.timesteps.max()) < scheduler.config.num_train_timesteps
        except ValueError:
            ok = False
    if not ok:
        raise ValueError(f"LIPSYNC_NUM_INFERENCE_STEPS={steps}: LatentSync's DDIM schedule takes 1 to 999 steps")


def load_engine(root: Path | None, layout: WeightsLayout, options: EngineOptions) -> LatentSyncEngine:
    from lipsync.model.latentsync.audio import load_whisper_encoder
    from lipsync.model.latentsync.loading import UNET_FILE, VAE_DIR, WHISPER_FILE, load_unet, load_vae

    if root is None:
        raise WeightsFolderError("LatentSync needs a weights folder (lipsync weights fetch latentsync DIR)")
    config = folder_config(root, layout.variant)
    dtype_name = resolve_dtype(options.dtype, options.device, prefer="fp16")  # the authors' inference: fp16
    dtype = torch_dtype(dtype_name)
    configure_backends(options.device, repeated_shapes=True)
    unet = load_unet(root / UNET_FILE, config.unet, device=options.device, dtype=dtype)
    vae = load_vae(root / VAE_DIR, device=options.device, dtype=dtype)
    whisper = load_whisper_encoder(root / WHISPER_FILE, device=options.device)
    if whisper.config.d_model != config.unet.cross_attention_dim:
        raise WeightsFolderError(f"{root / WHISPER_FILE}: whisper width {whisper.config.d_model} but the UNet's "
                                 f"cross_attention_dim is {config.unet.cross_attention_dim}")
    steps = options.num_inference_steps or config.inference_steps
    _check_steps(steps)
    info = EngineInfo(name=config.variant, crop_size=config.resolution, weights=root.name, dtype=dtype_name)
    log.info("LatentSync %s from %s (UNet step %s, config %s)", config.variant, root, unet.global_step,
             config.source)
    return LatentSyncEngine(config, unet, vae, whisper, info, device=options.device, dtype=dtype,
                            steps=steps,
                            guidance_scale=(options.guidance_scale if options.guidance_scale is not None
                                            else config.guidance_scale))
