"""The pipio engine: our LTX-based diffusion model (``LipSyncPipeline``) behind the engine interface.

Face preparation: the head square of ``lipsync.media.faces`` (the track's smoothed alignment) at the working size
(512 for trained weights, 64 for the random ``tiny`` config); the model repaints the landmark mouth mask of
real frames and the whole frame where the timeline has no source frame (additions, bridges) or the input is
a still; paste-back goes through the mouth mask, or the feathered whole-face mask for synthesised frames.
The model needs the whole timeline at once (its VAE and transformer blocks span frames), so ``generate``
gathers the crops first, at the working size, in a ``FrameStore`` on disk (the request's work folder), and
makes the model's masks from the landmarks a frame range at a time; the output is decoded and handed on a
VAE chunk at a time. Host memory is flat in the video length (768 KiB a frame on disk at 512²).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from lipsync.media.embedding import EMBEDDING_DIM, FaceEmbedder
from lipsync.media.faces import FaceTrack
from lipsync.model.pipio import crop_rule
from lipsync.model.devices import bytes_per_item, configure_backends, fit_batch, resolve_dtype, torch_dtype
from lipsync.model.engine import CropBatch, EngineInfo, EngineOptions, EngineRequest
from lipsync.media.frame_store import FrameStore
from lipsync.model.weights import WeightsLayout

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_WARNING = (
    "NOT A TRAINED MODEL: this worker runs the {config!r} model config with RANDOM weights ({why}); the output "
    "video is not a trained model's lip-sync. Set LIPSYNC_WEIGHTS_DIR to a weights folder for real results."
)
REFERENCE_POOL = 8
"""Candidate appearance-reference crops handed to the model (it picks min(strength, max_reference_frames))."""


class PipioEngine:
    def __init__(self, model, info: EngineInfo, *, steps: int, guidance_scale: float | None):
        self.model = model
        self.info = info
        self.steps = steps
        self.guidance_scale = guidance_scale  # None: the pipeline config's
        self.vae_bytes_per_latent_frame = 0.0  # measured on a GPU (measure_vae); 0: no cap
        self.block_bytes_per_latent_frame = 0.0  # measured on a GPU (measure_blocks); 0: no cap

    # ---------------------------------------------------------------------------------------- crop rule
    def face_affines(self, track: FaceTrack) -> np.ndarray:
        return crop_rule.face_affines(track, self.info.crop_size)

    def crop(self, frames: np.ndarray, affines: np.ndarray) -> np.ndarray:
        return crop_rule.crop_frames(frames, affines, self.info.crop_size)

    def model_masks(self, landmarks: np.ndarray) -> np.ndarray:
        return crop_rule.model_masks(landmarks, self.info.crop_size)

    def blend_masks(self, request: EngineRequest, start: int, landmarks: np.ndarray) -> np.ndarray:
        synthesised = self._synthesised(request)[start : start + len(landmarks)]
        return crop_rule.blend_masks(landmarks, synthesised, self.info.crop_size)

    # ---------------------------------------------------------------------------------------- forward
    def generate(self, request: EngineRequest, batches: Iterable[CropBatch]) -> Iterator[np.ndarray]:
        size = self.info.crop_size
        with FrameStore((size, size, 3), np.uint8, directory=request.workdir) as crops:
            present, landmarks = [], []
            for batch in batches:
                crops.append(batch.crops)
                present.append(batch.present)
                landmarks.append(batch.landmarks)
            present, landmarks = np.concatenate(present), np.concatenate(landmarks)
            generate = self._synthesised(request)
            request.metrics["generated_frames"] = int(generate.sum())
            # synthesised frames take mask 1 everywhere inside the model (their pixels are ignored)
            masks = crop_rule.LandmarkMasks(landmarks, size, still=request.is_image)
            references = self._references(crops, present, generate, request.is_image)
            result = self._run(request, crops, masks, generate, references)
            for note in result.notes:
                request.log(f"Model: {note}")
            request.metrics.update(face_id_cond_strength=result.face_id_cond_strength,
                                   num_frame_blocks=result.num_frame_blocks,
                                   vae_overlap_window_width=result.vae_overlap_window_width)
            yield from result.chunks

    @staticmethod
    def _synthesised(request: EngineRequest) -> np.ndarray:
        """Frames the model synthesises whole: the timeline's generated frames; every frame of a still (it is
        animated, the image being the appearance reference)."""
        return np.ones_like(request.generate) if request.is_image else request.generate

    def _identity(self, embedding: np.ndarray | None) -> np.ndarray | None:
        if embedding is not None:
            check_face_id_embedder(self.model.transformer.config.id_embed_dim, embedding.shape[-1])
        return embedding

    @staticmethod
    def _references(crops: np.ndarray, present: np.ndarray, generate: np.ndarray, is_image: bool) -> np.ndarray:
        """Appearance references: evenly spaced crops of real (not generated) face frames; the still for an
        image; crops of the held frames behind generated ones if nothing else shows the face."""
        if is_image:
            return crops[:1]
        pool = np.flatnonzero(present & ~generate)
        if pool.size == 0:
            pool = np.flatnonzero(present)
        picks = pool[np.linspace(0, pool.size - 1, min(REFERENCE_POOL, pool.size)).round().astype(int)]
        return crops[np.unique(picks)]

    def _run(self, request: EngineRequest, crops, masks, generate, references):
        steps = request.metrics.setdefault("num_inference_steps", self.steps)
        state = {"step": 0}

        def callback(stage: str, step: int, total: int, message: str) -> None:
            if stage == "vae_encode":
                request.progress("VAE encode chunk", step, total)
            elif stage == "block":
                request.progress(f"denoising block {step}/{total} step", state["step"] + 1, steps)
            elif stage == "denoise":
                state["step"] = step
            elif stage == "vae_decode":
                request.progress("VAE decode chunk", step, total)

        k = request.knobs
        request.log(f"Lip-sync model: {len(generate)} frames ({int(generate.sum())} generated), {steps} denoising "
                    f"steps, seed {k.seed}")
        vae_chunk, vae_overlap = self._fit_vae_chunk(request)
        block_width = self._fit_frame_block(request, len(generate))
        return self.model.stream(
            crops, masks, generate, request.audio, request.fps, prompt=k.prompt,
            face_id_embedding=self._identity(request.identity), reference_frames=references,
            vae_chunk_size=vae_chunk, vae_overlap_window_width=vae_overlap, frame_block_width=block_width,
            feed_forward_num_splits=k.feed_forward_num_splits,
            face_id_cond_strength=k.face_id_cond_strength, appearance_cond_strength=k.appearance_cond_strength,
            seed=k.seed, num_inference_steps=steps, guidance_scale=self.guidance_scale, callback=callback,
            encoded=request.encoded,
        )


    def encoder_cache_key(self, request: EngineRequest) -> dict:
        """The condition latents depend on the crops, their mouth masks (the landmarks), the timeline's generated
        frames, the weights, the dtype and the VAE chunking (in each name); the references on the picks."""
        return {"encoder": "pipio-condition", "dtype": self.info.dtype, "crop_size": self.info.crop_size}

    def _fit_vae_chunk(self, request: EngineRequest) -> tuple[int, int]:
        """``vae_chunk_size`` (8m+1 pixel frames) as the device's free memory allows now, at the cost of a latent
        frame measured at load; the overlap stays below the chunk. Logged when it binds."""
        k = request.knobs
        asked = max(1, (k.vae_chunk_size - 1) // 8)
        fit = fit_batch(asked, self.vae_bytes_per_latent_frame, str(self.model.device),
                        what="pipio VAE chunk in latent frames of 8 (vae_chunk_size)")
        if not fit.bound:
            return k.vae_chunk_size, k.vae_overlap_window_width
        chunk = 8 * fit.size + 1
        request.log(f"{fit.why}: vae_chunk_size {k.vae_chunk_size} -> {chunk}")
        request.metrics["vae_chunk_size_used"] = chunk
        return chunk, min(k.vae_overlap_window_width, chunk - 1)

    def _fit_frame_block(self, request: EngineRequest, num_frames: int) -> int:
        """``frame_block_width`` as the device's free memory allows now: the transformer's activations grow with
        the block's latent frames (one block = the whole clip at the default on short clips), at the cost of a
        latent frame measured at load. Logged when it binds."""
        k = request.knobs
        ratio = self.model.vae.temporal_compression_ratio
        asked = min(-(-k.frame_block_width // ratio), -(-(num_frames - 1) // ratio) + 1)  # latent frames in a block
        fit = fit_batch(asked, self.block_bytes_per_latent_frame, str(self.model.device),
                        what="pipio frame block in latent frames of 8 (frame_block_width)")
        if not fit.bound:
            return k.frame_block_width
        width = ratio * fit.size
        request.log(f"{fit.why}: frame_block_width {k.frame_block_width} -> {width}")
        request.metrics["frame_block_width_used"] = width
        return width

    def measure_blocks(self) -> None:
        """Device memory one more latent frame in a frame block costs the denoising step (the transformer's
        activations with the guidance batch, and the timeline's latents), measured once at load on a GPU by two
        one-step denoises that differ by one latent frame (the lazy decode is never run; 0 elsewhere: no cap)."""
        device = str(self.model.device)
        if not device.startswith("cuda"):
            return
        size = self.info.crop_size
        ratio = self.model.vae.temporal_compression_ratio
        identity = np.full(self.model.transformer.config.id_embed_dim, 0.1, np.float32)

        def denoise(m: int) -> None:
            n = ratio * m + 1
            frames = np.full((n, size, size, 3), 127, np.uint8)
            masks = np.zeros((n, size, size), np.float32)
            masks[:, size // 2:] = 1.0
            self.model.stream(frames, masks, np.zeros(n, bool), np.zeros(16000, np.float32), 25.0,
                              face_id_embedding=identity, reference_frames=frames[:1], vae_chunk_size=ratio + 1,
                              vae_overlap_window_width=0, frame_block_width=10_000, num_inference_steps=1,
                              guidance_scale=self.guidance_scale)

        self.block_bytes_per_latent_frame = bytes_per_item(denoise, device)
        log.info("pipio on %s: %.0f MiB a latent frame in a frame block", device,
                 self.block_bytes_per_latent_frame / 2**20)

    def measure_vae(self) -> None:
        """Device memory one more latent frame (8 pixel frames) costs the VAE, the larger of its encoder and its
        decoder, measured once at load on a GPU (0 elsewhere: no cap)."""
        import torch

        vae, device = self.model.vae, str(self.model.device)
        if not device.startswith("cuda"):
            return
        side = self.info.crop_size // vae.spatial_compression_ratio
        dtype = self.model.dtype
        temb = torch.zeros(1, device=device, dtype=dtype) if vae.config.timestep_conditioning else None
        with torch.no_grad():
            decode = bytes_per_item(lambda m: vae.decoder(
                torch.zeros(1, vae.config.latent_channels, m + 1, side, side, device=device, dtype=dtype), temb), device)
            encode = bytes_per_item(lambda m: vae.encoder(
                torch.zeros(1, 3, 8 * m + 1, self.info.crop_size, self.info.crop_size, device=device, dtype=dtype)),
                device)
        # + what the decoded chunk costs on its way out: 8 frames in fp32, blended and composited (two copies)
        self.vae_bytes_per_latent_frame = max(decode, encode) + 8 * 3 * self.info.crop_size ** 2 * 4 * 2
        log.info("pipio on %s: %.0f MiB a latent frame in the VAE", device, self.vae_bytes_per_latent_frame / 2**20)


class FaceIdEmbedderMismatch(ValueError):
    """The checkpoint was trained with a face-ID embedder of another width than the one this server runs."""


def check_face_id_embedder(model_dim: int, embedder_dim: int = EMBEDDING_DIM) -> None:
    """Fail loudly: running a checkpoint without the identity it was trained with silently spoils its output."""
    if model_dim != embedder_dim:
        raise FaceIdEmbedderMismatch(
            f"face-ID embedder mismatch: the model's transformer wants {model_dim}-d face-ID embeddings "
            f"(id_embed_dim) but the face-ID embedder ({FaceEmbedder.name}, lipsync.media.embedding) gives {embedder_dim}-d; "
            f"this checkpoint was trained with another embedder")


def load_engine(root: Path | None, layout: WeightsLayout, options: EngineOptions) -> PipioEngine:
    """Load the pipeline from ``root`` (``save_pretrained`` layout), or random weights of the configured preset."""
    from lipsync.model.pipio.pipeline import LipSyncPipeline

    device = options.device
    dtype_name = resolve_dtype(options.dtype, device, prefer="bf16")  # pipio is trained in bf16
    dtype = torch_dtype(dtype_name)
    configure_backends(device, repeated_shapes=False)  # token counts change with every request's length
    warning = None
    if root is not None:
        model = LipSyncPipeline.from_pretrained(root, device=device, dtype=dtype)
        weights, default_crop = root.name, 512
        log.info("pipio weights from %s", root)
    else:
        config = options.random_weights_config
        model = LipSyncPipeline.from_config(config, init_seed=0, device=device, dtype=dtype)
        weights, default_crop = f"random:{config}", 64 if config == "tiny" else 512
        why = "LIPSYNC_WEIGHTS_DIR is not set or empty"
        warning = RANDOM_WEIGHTS_WARNING.format(config=config, why=why)
        log.warning(warning)
    check_face_id_embedder(model.transformer.config.id_embed_dim)
    crop = options.face_crop_size or default_crop
    multiple = model.config.vae_spatial_multiple
    if crop % multiple:
        raise ValueError(f"face_crop_size {crop} must be a multiple of {multiple}")
    info = EngineInfo(name="pipio", crop_size=crop, weights=weights, random_weights_warning=warning, dtype=dtype_name,
                      needs_identity=True, affines_per_frame=True)
    model.place_text_encoder(options.text_encoder)  # the default prompt's embedding is cached from here on
    engine = PipioEngine(model, info, steps=options.num_inference_steps or model.config.num_inference_steps,
                         guidance_scale=options.guidance_scale)
    engine.measure_vae()
    engine.measure_blocks()
    if options.compile:
        compile_blocks(model)
        warm_up(engine)
    return engine


def compile_blocks(model, backend: str = "inductor") -> None:
    """``torch.compile`` each transformer block's repeated part in place: ``attend`` (everything before the
    feed-forward) and the feed-forward ``ff``, each on its own, while the block's ``feed_forward_num_splits``
    loop stays in Python, so a new split count is only a new chunk length. Dynamic shapes: the token count
    changes with the request length, the last frame block, the references and the split, so one graph serves
    them all. The reference bias reaches the graph as a tensor and the identity scale as a float the backend
    turns into one, so their values never recompile; whether there is a bias at all does (another code path):
    ``warm_up`` compiles both. ``backend``: tests use ``aot_eager`` (the graphs inductor gets, run as written)."""
    import torch
    from torch.fx.experimental import _config as fx_config

    for block in model.transformer.transformer_blocks:
        block.attend = torch.compile(block.attend, dynamic=True, backend=backend)
        block.ff.compile(dynamic=True, backend=backend)
        # Traced with duck sizing, sizes equal by chance become one symbol, guarded equal from then on (the
        # warm-up's 4 latent frames = tiny's 4 audio tokens per frame: every other length recompiled).
        block.forward = fx_config.patch(use_duck_shape=False)(block.forward)
    log.info("pipio: %d transformer blocks compiled (torch.compile %s, dynamic shapes)",
             len(model.transformer.transformer_blocks), backend)


def warm_up(engine: PipioEngine, num_frames: int = 25) -> float:
    """Throw-away generations at the working size, one step each with the engine's guidance, so compilation
    happens at worker start and no request pays for it. They take the paths every request takes: a face-ID
    embedding (the worker always computes one), and the references both without a logit bias (strength <= the
    references: a second) and with one (strength above them: a second generation, short). Returns seconds."""
    import time

    size = engine.info.crop_size
    started = time.perf_counter()
    identity = np.full(engine.model.transformer.config.id_embed_dim, 0.1, np.float32)
    # (frames, ff splits, strength): one reference, so strength 2 gives a bias of log(2); one split hands the
    # feed-forward a contiguous input, more a strided view (a guard on strides: both are compiled)
    for frames_count, splits, strength in ((num_frames, 2, 1), (9, 1, 2)):
        frames = np.full((frames_count, size, size, 3), 127, np.uint8)
        masks = np.zeros((frames_count, size, size), np.float32)
        masks[:, size // 2 :] = 1.0
        engine.model(frames, masks, np.zeros(frames_count, bool), np.zeros(16000, np.float32), 25.0,
                     face_id_embedding=identity, reference_frames=frames[:1], appearance_cond_strength=strength,
                     feed_forward_num_splits=splits, num_inference_steps=1, guidance_scale=engine.guidance_scale)
    seconds = time.perf_counter() - started
    log.info("pipio: warm-up generations (compile) took %.1f s", seconds)
    return seconds
