"""The InfiniteTalk engine behind the engine interface: a whole-frame engine.

- "Crop": the whole frame mapped to the resolution bucket of its aspect ratio (``crop_rule``), the same affine
  for every frame; blend masks are everywhere one, so the worker pastes the generated frame over the whole
  bucket area and scales it to the output size (a 1080p source is generated at 480p or 720p and scaled up).
- ``generate`` pulls the worker's frames only as far as the next chunk's reference frame, runs the authors'
  recipe one 4n+1-frame chunk at a time (``sampling``), and yields each chunk's new frames: memory is one chunk.
  Every frame is generated, so additions and removal bridges get generated motion (their crop is the held
  neighbour; a chunk starting there takes it as its reference), and a still image comes to life.
- Knobs: ``frame_block_width`` → frames per chunk, rounded down to 4n+1, at most the trained 81 (the schema
  default 136 → the authors' 81); ``vae_overlap_window_width`` → motion frames, 4n+1 below the chunk (default 16 → the authors' 9);
  ``seed`` → the noise; the custom prompt → the text prompt (else our default prompt). ``vae_chunk_size``,
  ``feed_forward_num_splits``, ``face_id_cond_strength`` and ``appearance_cond_strength`` have no counterpart:
  said once in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from lipsync.model.devices import configure_backends, resolve_dtype, torch_dtype
from lipsync.model.engine import CropBatch, EngineInfo, EngineOptions, EngineRequest, Knobs
from lipsync.model.infinitetalk import crop_rule
from lipsync.model.infinitetalk.config import BUCKETS, DEFAULT_PROMPT, NEGATIVE_PROMPT, SamplingConfig
from lipsync.model.weights import WeightsFolderError, WeightsLayout

log = logging.getLogger(__name__)

UNUSED_KNOBS = ("vae_chunk_size", "feed_forward_num_splits", "face_id_cond_strength", "appearance_cond_strength")


def chunk_frames(knobs: Knobs, sampling: SamplingConfig) -> tuple[int, int, list[str]]:
    """(frames per chunk, motion frames, notes) from the request's knobs."""
    notes = []
    default = Knobs()
    if knobs.frame_block_width == default.frame_block_width:
        frames = sampling.frame_num
    else:
        frames = max(5, 4 * ((knobs.frame_block_width - 1) // 4) + 1)
        if frames > sampling.frame_num:
            notes.append(f"InfiniteTalk frames per chunk (frame_block_width): {knobs.frame_block_width} asked, "
                         f"{sampling.frame_num} used: the chunk length it was trained on is the longest (attention "
                         f"cost grows with the square of the chunk)")
            frames = sampling.frame_num
        elif frames != knobs.frame_block_width:
            notes.append(f"frame_block_width {knobs.frame_block_width} -> {frames} frames per chunk (4n+1)")
    if knobs.vae_overlap_window_width == default.vae_overlap_window_width:
        motion = sampling.motion_frame
    else:
        motion = max(1, 4 * ((knobs.vae_overlap_window_width - 1) // 4) + 1) if knobs.vae_overlap_window_width else 1
        if motion != knobs.vae_overlap_window_width:
            notes.append(f"vae_overlap_window_width {knobs.vae_overlap_window_width} -> {motion} motion frames "
                         "(4n+1, at least 1)")
    if motion >= frames:
        new = max(1, 4 * ((frames - 2) // 4) + 1)
        notes.append(f"motion frames {motion} -> {new} (below the chunk's {frames})")
        motion = new
    return frames, min(motion, frames - 4), notes


class InfiniteTalkEngine:
    def __init__(self, sampler, wav2vec, prompts, info: EngineInfo, sampling: SamplingConfig, *, device: str):
        self.sampler, self.wav2vec, self.prompts = sampler, wav2vec, prompts
        self.info = info
        self.sampling = sampling
        self.device = device
        self.table = sampling.table
        self._frame_size: tuple[int, int] | None = None

    # ---------------------------------------------------------------------------------------- whole frame
    def face_affines(self, track) -> np.ndarray:
        width, height = track.frame_size
        self._frame_size = (height, width)
        a = crop_rule.affine(height, width, self.table)
        return np.broadcast_to(a, (track.num_frames, 2, 3)).copy()

    def crop(self, frames: np.ndarray, affines: np.ndarray) -> np.ndarray:
        h, w = frames.shape[1:3]
        self._frame_size = (h, w)
        bh, bw = crop_rule.size(h, w, self.table)
        out = np.zeros((len(frames), bh, bw, 3), np.uint8)
        for k, (frame, m) in enumerate(zip(frames, affines)):
            if np.isfinite(m).all():
                out[k] = crop_rule.crop_frame(frame, self.table)
        return out

    def blend_masks(self, request: EngineRequest, start: int, landmarks: np.ndarray) -> np.ndarray:
        if self._frame_size is None:
            raise RuntimeError("blend_masks before face_affines: the frame size (and so the bucket) is unknown")
        bh, bw = crop_rule.size(*self._frame_size, self.table)
        return np.ones((len(landmarks), bh, bw), np.float32)

    def encoder_cache_key(self, request: EngineRequest) -> dict:
        """What each chunk computes from its reference frame alone (a crop of the video: the CLIP tokens, the VAE
        latent of the reference followed by zero frames, and for the first chunk the reference's own latent, the
        motion frame) depends on the crops, the weights, the dtype, the bucket table and the chunk's start and
        length (in each name). A later chunk's motion latent encodes generated frames: never cached."""
        return {"encoder": "infinitetalk-clip-vae", "dtype": self.info.dtype, "table": self.table}

    # ---------------------------------------------------------------------------------------- forward
    def generate(self, request: EngineRequest, batches: Iterable[CropBatch]) -> Iterator[np.ndarray]:
        import torch

        from lipsync.model.infinitetalk import audio as audio_path
        from lipsync.model.infinitetalk.sampling import Prompts, chunk_starts, to_pixels, to_uint8

        k = request.knobs
        total = request.num_frames
        frames, motion, notes = chunk_frames(k, self.sampling)
        frames = min(frames, 4 * -(-(total - 1) // 4) + 1) if total > 1 else 1
        motion = min(motion, max(1, frames - 4))
        starts = chunk_starts(total, frames, motion)
        s = self.sampling
        request.metrics.update(num_inference_steps=s.steps, text_guidance_scale=s.text_guidance,
                               guidance_scale=s.audio_guidance, chunk_frames=frames, motion_frames=motion,
                               chunks=len(starts), seed=k.seed, shift=s.sample_shift)
        for note in notes:
            request.log(note)
        request.log(f"InfiniteTalk ({self.info.name}): {total} frames in {len(starts)} chunk(s) of {frames} frames, "
                    f"{motion} motion frames, {s.steps} steps, shift {s.sample_shift:g}, text guidance "
                    f"{s.text_guidance:g}, audio guidance {s.audio_guidance:g}, seed {k.seed}; every frame is "
                    f"generated (whole frames), pasted back at the output size")
        unused = [f"{name}={getattr(k, name)}" for name in UNUSED_KNOBS]
        request.log(f"InfiniteTalk has no mechanism for {', '.join(unused)}: accepted, not used")

        prompt = k.prompt or DEFAULT_PROMPT
        if not k.prompt:
            request.log(f"prompt: none given, using {DEFAULT_PROMPT!r}")
        try:
            text = self.prompts(prompt)
        except LookupError:
            request.log("custom prompt ignored: this worker dropped its text encoder (LIPSYNC_TEXT_ENCODER=drop)")
            text = self.prompts(DEFAULT_PROMPT)
        prompts = Prompts(text=text, null=self.prompts(NEGATIVE_PROMPT))

        wav, said = audio_path.loudness_normalised(request.audio)
        request.log(f"audio: {said}")
        emb = audio_path.embedding(self.wav2vec, wav, total, device=self.device)

        generator = torch.Generator("cpu").manual_seed(k.seed % 2**64)
        references = _References(batches)
        motion_frames = None
        colour_ref = None
        done = 0
        for index, start in enumerate(starts):
            reference = references.at(start)
            if index == 0:
                colour_ref = to_pixels(reference[None])[0, :, 0].permute(1, 2, 0).numpy()
            else:
                emb = audio_path.extended(emb, start + frames)
            windows = audio_path.windows(emb, start, frames)
            stage = f"denoising frames {start}-{start + frames - 1} (chunk {index + 1} of {len(starts)}), step"
            encoded = None if request.encoded is None else (
                lambda name, compute, prefix=f"chunk/{start}/{frames}": request.encoded(f"{prefix}/{name}", compute))
            result = self.sampler.chunk(reference, motion_frames, windows, prompts, generator, colour_ref,
                                        on_step=lambda i, n: request.progress(stage, i, n), encoded=encoded)
            video = to_uint8(result.video)
            new = video if index == 0 else video[motion:]
            new = new[: total - done]
            done += len(new)
            motion_frames = result.video[0, :, -motion:].permute(1, 2, 3, 0).numpy()
            yield new
        references.drain()


class _References:
    """The worker's crops, pulled only as far as the next reference frame; a frame without a face (zeros from
    the worker) is replaced by the last frame that had one."""

    def __init__(self, batches: Iterable[CropBatch]):
        self._it = iter(batches)
        self._batch: CropBatch | None = None
        self._last: np.ndarray | None = None

    def at(self, index: int) -> np.ndarray:
        while self._batch is None or index >= self._batch.start + len(self._batch):
            if self._batch is not None:
                self._remember(self._batch, len(self._batch) - 1)
            self._batch = next(self._it)
        j = index - self._batch.start
        self._remember(self._batch, j)
        if self._last is None:  # no face yet: the first frame with one ahead
            while not self._batch.present.any():
                self._batch = next(self._it)
            self._remember(self._batch, int(np.flatnonzero(self._batch.present)[0]))
        return self._last

    def _remember(self, batch: CropBatch, upto: int) -> None:
        seen = np.flatnonzero(batch.present[: upto + 1])
        if len(seen):
            self._last = np.array(batch.crops[seen[-1]])

    def drain(self) -> None:
        for _ in self._it:  # the worker's crop stage finishes its pass
            pass


WORKING_BYTES = {"480p": 8 << 30, "720p": 14 << 30}
"""GPU memory besides the transformer's weights, predicted (``lipsync/model/README.md``): one transformer call's
activations (3-4 GB at 480p, 7-9 GB at 720p), the VAE decode of a chunk (~2 GB), CLIP, the VAE and wav2vec2."""


def offload_plan(options: EngineOptions, tconfig, dtype, table: str, beside: int = 0) -> tuple[bool, str]:
    """(offload the transformer's blocks?, why). ``auto`` offloads on a CUDA device when the transformer's
    weights, ``beside`` (bytes of other weights on the device: umT5's) and ``WORKING_BYTES`` exceed the free
    memory."""
    import torch

    from lipsync.model.infinitetalk.transformer import InfiniteTalkTransformer

    if options.offload != "auto":
        return options.offload == "blocks", f"LIPSYNC_OFFLOAD={options.offload}"
    if torch.device(options.device).type != "cuda":
        return False, f"auto: {options.device} is not a GPU"
    with torch.device("meta"):
        count = sum(p.numel() for p in InfiniteTalkTransformer(tconfig).parameters())
    need = count * dtype.itemsize + beside + WORKING_BYTES[table]
    free, _ = torch.cuda.mem_get_info(torch.device(options.device))
    return need > free, f"auto: {need / 2**30:.1f} GiB needed, {free / 2**30:.1f} GiB free"


def load_engine(root: Path | None, layout: WeightsLayout, options: EngineOptions) -> InfiniteTalkEngine:
    import json

    import torch

    from lipsync.model.infinitetalk import layout as files
    from lipsync.model.infinitetalk import loading, lora
    from lipsync.model.infinitetalk.sampling import InfiniteTalkSampler
    from lipsync.model.infinitetalk.text import PromptEncoder

    if root is None:
        raise WeightsFolderError("InfiniteTalk needs a weights folder (lipsync weights fetch infinitetalk DIR)")
    wan = root / files.wan_folder(layout.variant)
    dtype_name = resolve_dtype(options.dtype, options.device, prefer="bf16")  # the authors' param_dtype
    dtype = torch_dtype(dtype_name)
    configure_backends(options.device, repeated_shapes=True)
    w2v_dir = root / files.WAV2VEC
    wav2vec_config = json.loads((w2v_dir / "config.json").read_text())
    tconfig = loading.transformer_config(wan, root / files.SINGLE, wav2vec_config)
    table = "720p" if layout.variant.endswith("720p") else "480p"
    t5_bytes = (wan / files.T5_FILE).stat().st_size if options.text_encoder == "device" else 0  # bf16 on disk
    offload, why = offload_plan(options, tconfig, dtype, table, t5_bytes)
    log.info("InfiniteTalk: model offload %s (%s)", "on: the blocks stream from host memory" if offload else "off",
             why)
    transformer = loading.load_transformer(wan, root / files.SINGLE, tconfig, dtype=dtype,
                                           device="cpu" if offload else options.device)
    vae = loading.load_vae(wan / files.VAE_FILE, device=options.device, dtype=torch.float32)  # fp32, as theirs
    clip = loading.load_clip(wan / files.CLIP_FILE, device=options.device, dtype=dtype)
    t5_device = options.device if options.text_encoder == "device" else "cpu"
    t5 = loading.load_t5(wan / files.T5_FILE, device=t5_device, dtype=dtype)
    tokenizer = loading.load_tokenizer(wan / files.T5_TOKENIZER)
    wav2vec = loading.load_wav2vec(w2v_dir, device=options.device)
    if tconfig.dim < 256:  # the small random test model: the small recipe (tiny buckets, 9-frame chunks)
        from lipsync.model.infinitetalk.config import SMALL

        sampling = SMALL.sampling
    else:
        sampling = SamplingConfig(table=table)
    loras = lora.plan(root)
    for path, scale in loras.files:
        changed = lora.merge(transformer, path, scale)
        log.info("InfiniteTalk: LoRA %s merged at scale %g (%d tensors)", path.name, scale, changed)
    if offload:
        transformer.offload_blocks(options.device)
    sampling = sampling.with_(steps=loras.steps, text_guidance=loras.text_guidance, audio_guidance=loras.audio_guidance)
    sampling = sampling.with_(steps=options.num_inference_steps, audio_guidance=options.guidance_scale)
    prompts = PromptEncoder(t5, tokenizer, tconfig.text_len, device=options.device,
                            placement="cpu" if options.text_encoder == "cpu" else "device")
    if options.text_encoder == "drop":
        prompts.drop(DEFAULT_PROMPT, NEGATIVE_PROMPT)
    if (root / files.MULTI).is_file():
        log.info("InfiniteTalk: %s found (two speakers); not used: this engine drives one speaker", files.MULTI)
    sampler = InfiniteTalkSampler(transformer, vae, clip, sampling, device=options.device, dtype=dtype)
    side = max(max(b) for b in BUCKETS[sampling.table].values())
    name = layout.variant + ("+lora" if loras.files else "")
    info = EngineInfo(name=name, crop_size=side, weights=root.name, dtype=dtype_name, whole_frame=True)
    log.info("InfiniteTalk %s from %s: transformer %d layers x %d, %s buckets, %d steps", layout.variant, root,
             tconfig.num_layers, tconfig.dim, sampling.table, sampling.steps)
    return InfiniteTalkEngine(sampler, wav2vec, prompts, info, sampling, device=options.device)
