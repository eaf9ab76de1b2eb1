"""The LatentSync engine (1.6 at 512², 1.5 at 256², or a folder's own ``unet_config.yaml``) behind the engine
interface.

- Faces: the published template alignment (``crop_rule.align_track``) and its two-stage crop; paste-back by the
  published restore (``info.restore_warp``: the crop resized to the 420 x 560 warp, warped back, through a mask
  eroded and feathered in frame pixels, ``lipsync.media.paste``). The generated crops are handed over as the
  published restore takes the decoded face: float32 in pixel units, ``(x / 2 + 0.5) * 255``, unclamped and
  unrounded (``sampling.to_pixels``); the paste clamps and truncates once, after its resampling. ``blend_masks``
  gives that mask's crop-space likeness (``crop_rule.restore_mask``) for callers that paste through masks.
- ``generate`` pulls the worker's crops as it needs them, cut into 16-frame segments (fixed by training: the
  temporal layers and the UNet's GroupNorms span a segment), runs ``segments_per_call`` segments per UNet call
  and yields each call's frames: memory is flat in the video's length. Cancel (``request.progress`` raising)
  takes effect between denoising steps.
- DeepCache as published (``LIPSYNC_DEEP_CACHE``, on): the UNet whole on every third denoising step of a segment,
  its shallow branch in between.
- Knobs: ``seed`` seeds the noise; ``frame_block_width`` is frames per UNet call, in whole segments
  (``max(1, frame_block_width // 16)``), capped per request by the memory free then and the cost of a segment
  measured at load (``lipsync.model.devices.fit_batch``), and below the fused attention kernels' batch limit;
  an out-of-memory is retried once in halves; ``vae_chunk_size`` is the VAE's batch; ``feed_forward_num_splits``
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
from lipsync.model.devices import (
    BatchFit, bytes_per_item, configure_backends, fit_batch, in_halves_on_oom, resolve_dtype, torch_dtype,
)
from lipsync.model.engine import CropBatch, EngineInfo, EngineOptions, EngineRequest, authors_feed_forward_splits
from lipsync.model.latentsync import crop_rule
from lipsync.model.latentsync.config import LatentSyncConfig, folder_config, scheduler_config
from lipsync.model.weights import WeightsFolderError, WeightsLayout

log = logging.getLogger(__name__)

UNUSED_KNOBS = ("vae_overlap_window_width", "face_id_cond_strength", "appearance_cond_strength")
DEEP_CACHE_INTERVAL = 3
"""The published ``--enable_deepcache`` (``inference.sh``, the Gradio app, the evaluation script): interval 3,
branch 0 (``lipsync.model.latentsync.unet.DeepCache``); ``LIPSYNC_DEEP_CACHE=false`` runs every step whole."""
SDPA_BATCH_LIMIT = 65535
"""PyTorch's fused attention kernels fail on a batch of 65,536 or more (pytorch#146704, #142228); the temporal
attention's batch is (2 with guidance) x segments x latent h x w, so segments per call stay below it."""


def segments_limit(config: LatentSyncConfig, guided: bool) -> int:
    """Segments one UNet call may batch within ``SDPA_BATCH_LIMIT`` (7 at 64² latents with guidance)."""
    return max(1, SDPA_BATCH_LIMIT // ((2 if guided else 1) * config.latent_size ** 2))


class LatentSyncEngine:
    def __init__(self, config: LatentSyncConfig, unet, vae, whisper, info: EngineInfo, *, device: str, dtype,
                 steps: int, guidance_scale: float, deep_cache: bool = True):
        from lipsync.model.latentsync.sampling import LatentSyncSampler

        self.config = config
        self.info = info
        self.unet, self.whisper = unet, whisper
        self.steps, self.guidance_scale = steps, guidance_scale
        self.size = config.resolution
        self.device = device
        self.deep_cache_interval = DEEP_CACHE_INTERVAL if deep_cache else 1
        self.sampler = LatentSyncSampler(unet, vae, scheduler_config(), crop_rule.mouth_mask(self.size), device=device,
                                         dtype=dtype, deep_cache_interval=self.deep_cache_interval)
        self.segment_bytes = self._measure_segment()  # 0 on a CPU
        self.cpu_segments_per_call = 1
        """On a CPU batching gains nothing; tests raise it to check batched numerics there."""
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
        guided = self.guidance_scale > 1.0
        if self.device.startswith("cuda"):  # sized now, from the memory free now and the cost measured at load
            fit = fit_batch(max(1, k.frame_block_width // seg_len), self.segment_bytes, self.device,
                            what="LatentSync segments per UNet call (frame_block_width)",
                            limit=segments_limit(self.config, guided),
                            limit_why=f"the fused attention kernels' batch limit ({SDPA_BATCH_LIMIT + 1})")
        else:  # a CPU gains no speed from batching segments, only memory
            asked = max(1, k.frame_block_width // seg_len)
            fit = BatchFit(min(asked, self.cpu_segments_per_call), asked, "")
        per_call = fit.size
        splits, why = authors_feed_forward_splits(k.feed_forward_num_splits)
        self.unet.set_feed_forward_splits(splits)
        if why:
            request.log(f"LatentSync: {why}")
        num_segments = -(-request.num_frames // seg_len)
        request.metrics.update(num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                               segment_frames=seg_len, segments=num_segments, segments_per_call=per_call,
                               vae_batch=k.vae_chunk_size, feed_forward_num_splits=splits,
                               seed=k.seed, deep_cache_interval=self.deep_cache_interval)
        request.log(f"LatentSync ({self.info.name}): {request.num_frames} frames in {num_segments} segments of "
                    f"{seg_len} (fixed by training), {per_call} segment(s) per UNet call, {self.steps} DDIM steps"
                    f"{f' (DeepCache: whole UNet every {self.deep_cache_interval} steps)' if self.deep_cache_interval > 1 else ''}, "
                    f"audio guidance {self.guidance_scale:g}, seed {k.seed}")
        if fit.why:
            request.log(fit.why)
        elif per_call < fit.asked:
            request.log(f"LatentSync segments per UNet call (frame_block_width): {fit.asked} asked, {per_call} used: "
                        f"on a CPU batching segments gains nothing")
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
            state = run.generator.get_state()  # an out-of-memory retry draws the same noise again

            def sample(part: list[Segment]) -> list[np.ndarray]:
                if part[0] is todo[0]:
                    run.generator.set_state(state)
                return run.segments([SegmentInput(g.crops, audio.frames(g.start, len(g.crops)),
                                                  self._encoded(request, g, run.vae_batch)) for g in part],
                                    on_step=lambda step, steps: request.progress(stage, step, steps))

            outs = in_halves_on_oom(sample, todo, what="LatentSync", say=request.log)
            results = {g.start: o for g, o in zip(todo, outs)}
        for g in group:  # float32 pixel units throughout (``sampling.to_pixels``), passed-through crops too
            out = results.get(g.start)
            if out is None:
                out = g.crops.astype(np.float32)
            elif not g.present.all():  # frames without a face keep their input crop
                out = np.where(g.present[:, None, None, None], out, g.crops.astype(np.float32))
            yield out


    @staticmethod
    def _encoded(request: EngineRequest, segment: "Segment", vae_batch: int):
        """The segment's VAE posterior moments through the video-side cache (named by its frames and the VAE
        batch), or None without one."""
        if request.encoded is None:
            return None
        prefix = f"segment/{segment.start}/{len(segment.crops)}/{vae_batch}"
        return lambda name, compute: request.encoded(f"{prefix}/{name}", compute)

    def encoder_cache_key(self, request: EngineRequest) -> dict:
        """The masked and reference posteriors depend on the crops, the mouth mask, the weights, the dtype and
        the VAE batch (in each name)."""
        return {"encoder": "latentsync-vae-posterior", "dtype": self.info.dtype, "resolution": self.size}

    def _measure_segment(self) -> float:
        """Device memory one more segment in a UNet call costs (a guided step, the VAE in and out), measured
        once at load on this GPU."""
        if not self.device.startswith("cuda"):
            return 0.0
        from lipsync.model.latentsync.sampling import SegmentInput

        n, width = self.config.num_frames, self.unet.config.cross_attention_dim
        crops = np.zeros((n, self.size, self.size, 3), np.uint8)
        import torch

        audio = torch.zeros(n, 50, width)
        run = self.sampler.run(seed=0, steps=1, guidance_scale=self.guidance_scale, vae_batch=n)
        cost = bytes_per_item(lambda k: run.segments([SegmentInput(crops, audio)] * k), self.device)
        log.info("%s on %s: %.2f GiB a segment per UNet call", self.info.name, self.device, cost / 2**30)
        return cost


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
    import torch

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
    # whisper in fp16 where the rest is (the authors' GPU inference); with bf16 (ours, opt-in) it stays fp32
    whisper = load_whisper_encoder(root / WHISPER_FILE, device=options.device,
                                   dtype=torch.float16 if dtype == torch.float16 else torch.float32)
    if whisper.config.d_model != config.unet.cross_attention_dim:
        raise WeightsFolderError(f"{root / WHISPER_FILE}: whisper width {whisper.config.d_model} but the UNet's "
                                 f"cross_attention_dim is {config.unet.cross_attention_dim}")
    steps = options.num_inference_steps or config.inference_steps
    _check_steps(steps)
    info = EngineInfo(name=config.variant, crop_size=config.resolution, weights=root.name, dtype=dtype_name,
                      restore_warp=crop_rule.warp_size(config.resolution))  # the published restore
    log.info("LatentSync %s from %s (UNet step %s, config %s)", config.variant, root, unet.global_step,
             config.source)
    return LatentSyncEngine(config, unet, vae, whisper, info, device=options.device, dtype=dtype,
                            steps=steps, deep_cache=options.deep_cache,
                            guidance_scale=(options.guidance_scale if options.guidance_scale is not None
                                            else config.guidance_scale))
