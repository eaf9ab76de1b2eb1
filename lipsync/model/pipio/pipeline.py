"""LipSyncPipeline: face-crop frames + mouth mask + audio -> lip-synced face-crop frames.

The recipe (``__call__``), in diffusers' numbered style:

1. check inputs (``ModelInputError`` = ``lipsync.contract.errors.InvalidInput`` + ``ValueError``, naming the field);
2. resolve the schema knobs (face-ID auto rule, VAE overlap rounding, frame blocks), recording every choice;
3. encode the prompt (T5) and the audio (Whisper, per latent frame windows; zeros = null audio for guidance);
4. encode the masked video (chunked VAE), the latent mouth mask and the appearance references;
5. draw the initial noise for the whole timeline in one draw from ``seed``;
6. set the flow-matching timesteps (LTX's resolution-dependent shift);
7. denoise: per step, per frame block, blend the blocks' velocities, one Euler step;
8. decode (chunked VAE, streamed) and composite in pixel space: outside the mask the input pixels are kept
   bit for bit.

The pipeline knows nothing of HTTP, queues or files other than its own weights directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler
from safetensors.torch import save_model
from transformers import PreTrainedTokenizerBase, T5EncoderModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from lipsync.contract.errors import InvalidInput
from lipsync.media.frame_store import FrameStore
from lipsync.model.devices import cast_module
from lipsync.model.loading import LoadReport

from .audio_encoder import build_audio_encoder
from .autoencoder_lipsync import decode_chunked, denormalize_latents, plan_chunks
from .conditioning import (
    FrameSource,
    composite,
    encode_audio_windows,
    encode_condition,
    encode_reference_frames,
    latent_coords,
    pack_latents,
    place_references,
    shift_mu,
    unpack_latents,
)
from .config import (
    LipSyncConfig,
    PipelineConfig,
    load_config,
    pipeline_config_from_dict,
)
from .frame_blocks import FrameBlock, block_weights, plan_frame_blocks
from .loading import load_audio_encoder, load_text_encoder, load_transformer, load_vae
from .text_encoder import (
    build_text_encoder,
    build_tokenizer,
    check_tokenizer,
    encode_prompt,
)
from .transformer_lipsync import (
    LipSyncConditioning,
    LipSyncTransformer3DModel,
    reference_logit_bias,
)

logger = logging.getLogger(__name__)

PROMPT_CACHE_SIZE = 8
"""Prompt embeddings kept (most recently used)."""

ProgressCallback = Callable[[str, int, int, str], None]
"""``callback(stage, step, total, message)``; stages: ``vae_encode``, ``block``, ``denoise``, ``vae_decode``.
It may raise to abort (the worker's cancel): the exception propagates and no further step runs."""


class ModelInputError(InvalidInput, ValueError):
    """A bad argument to the pipeline: an HTTP 422 naming the request field (``field``), and a ValueError."""


@dataclass
class LipSyncPipelineOutput:
    """Result of :meth:`LipSyncPipeline.__call__`.

    Attributes:
        frames: (T, H, W, 3) uint8 generated face-crop frames (input pixels outside the mask, bit for bit).
        notes: every adjustment or automatic choice made (also logged), e.g. the resolved face-ID strength.
        face_id_cond_strength: the strength actually used (after the ``-1`` rule).
        vae_overlap_window_width: the overlap actually used.
        num_frame_blocks: how many transformer blocks each step ran.
    """

    frames: np.ndarray
    notes: list[str] = field(default_factory=list)
    face_id_cond_strength: int = 0
    vae_overlap_window_width: int = 0
    num_frame_blocks: int = 1


@dataclass
class LipSyncStream:
    """Result of :meth:`LipSyncPipeline.stream`: denoising is done; ``chunks`` decodes and composites the
    frames lazily, a VAE chunk at a time ((n, H, W, 3) uint8, in order, T frames in all), so the caller can
    encode each before the next is decoded. The other fields are :class:`LipSyncPipelineOutput`'s."""

    chunks: Iterator[np.ndarray]
    notes: list[str] = field(default_factory=list)
    face_id_cond_strength: int = 0
    vae_overlap_window_width: int = 0
    num_frame_blocks: int = 1


class LipSyncPipeline:
    """Audio-driven mouth inpainting (and whole-frame generation) on face crops.

    Args:
        transformer: :class:`LipSyncTransformer3DModel`.
        vae: diffusers ``AutoencoderKLLTXVideo``.
        audio_encoder: transformers ``WhisperEncoder``.
        text_encoder: transformers ``T5EncoderModel``; tokenizer: its tokenizer.
        scheduler: diffusers ``FlowMatchEulerDiscreteScheduler``.
        config: :class:`PipelineConfig` (steps, guidance, conditioning rules).
    """

    def __init__(self, transformer: LipSyncTransformer3DModel, vae: AutoencoderKLLTXVideo,
                 audio_encoder: WhisperEncoder, text_encoder: T5EncoderModel, tokenizer: PreTrainedTokenizerBase,
                 scheduler: FlowMatchEulerDiscreteScheduler, config: PipelineConfig):
        self.transformer, self.vae = transformer.eval(), vae.eval()
        self.audio_encoder, self.text_encoder = audio_encoder.eval(), text_encoder.eval()
        self.tokenizer, self.scheduler, self.config = tokenizer, scheduler, config
        self.load_reports: list[LoadReport] = []
        self.text_encoder_placement = "device"
        self._prompt_cache: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._block_weights: dict[tuple, list[torch.Tensor]] = {}

    # ------------------------------------------------------------------------------------------------ build/load
    @classmethod
    def from_config(cls, name_or_path: str | Path | LipSyncConfig = "tiny", *, init_seed: int = 0,
                    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> "LipSyncPipeline":
        """Randomly initialised pipeline of a preset (``"tiny"``, ``"base"``) or config file. On CPU the weights
        are a function of ``init_seed`` (the global RNG is left untouched); on a GPU they are drawn there."""
        config = name_or_path if isinstance(name_or_path, LipSyncConfig) else load_config(name_or_path)
        # Built directly on the target device (a GPU initialises the base sizes in seconds, not minutes) and in
        # the target dtype: nothing is ever held in fp32 first (T5-XXL alone would be 19 GB of it).
        default_dtype = torch.get_default_dtype()
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(init_seed)
            torch.set_default_dtype(dtype)
            try:
                pipe = cls(LipSyncTransformer3DModel(**config.transformer), AutoencoderKLLTXVideo(**config.vae),
                           build_audio_encoder(config.audio_encoder), build_text_encoder(config.text_encoder),
                           build_tokenizer(None), FlowMatchEulerDiscreteScheduler(**config.scheduler), config.pipeline)
            finally:
                torch.set_default_dtype(default_dtype)
        return pipe.to(device, dtype)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, transformer_overrides: dict | None = None,
                        allow_new_lipsync_modules: bool = False,
                        pipeline_config: PipelineConfig | None = None) -> "LipSyncPipeline":
        """Load the diffusers-style layout written by :meth:`save_pretrained` (or assembled by hand)::

            <dir>/pipeline_config.json                        PipelineConfig (required unless ``pipeline_config``
                                                              is passed: guidance and steps live there)
            <dir>/transformer/config.json + diffusion_pytorch_model.safetensors[.index.json]
            <dir>/vae/config.json + diffusion_pytorch_model.safetensors
            <dir>/audio_encoder/config.json + model.safetensors   (a full Whisper checkpoint works too)
            <dir>/text_encoder/config.json + model.safetensors    (a full T5 checkpoint works too)
            <dir>/scheduler/scheduler_config.json
            <dir>/tokenizer/                                  T5's tokenizer; only a text encoder sized for the
                                                              byte-level ByT5 vocabulary (259) may go without

        ``transformer/`` may hold a *stock* ``LTXVideoTransformer3DModel`` checkpoint: pass the lip-sync
        sizes in ``transformer_overrides`` and ``allow_new_lipsync_modules=True``; the new modules keep their
        fresh initialisation and are listed in ``pipe.load_reports``. Any other missing, unexpected or
        mis-shaped key raises :class:`WeightsLoadError` naming all of them.
        """
        root = Path(directory)
        if not root.is_dir():
            raise FileNotFoundError(f"model directory {root} does not exist")
        if pipeline_config is None:  # a folder without it would silently sample with the defaults (guidance 1.0)
            if not (root / "pipeline_config.json").is_file():
                raise FileNotFoundError(
                    f"{root / 'pipeline_config.json'} is missing: it holds the sampling settings (steps, audio "
                    f"guidance) the weights were trained for; save_pretrained and lipsync train write it. Pass "
                    f"pipeline_config= to load a folder without one (e.g. stock LTX-Video weights for training)")
            pipeline_config = pipeline_config_from_dict(json.loads((root / "pipeline_config.json").read_text()),
                                                        str(root / "pipeline_config.json"))
        # Each component is made in its dtype on its device and filled from the file (no fp32 transient).
        place = dict(device=device, dtype=dtype)
        transformer, t_report = load_transformer(root / "transformer", overrides=transformer_overrides,
                                                 allow_new_lipsync_modules=allow_new_lipsync_modules, **place)
        vae, v_report = load_vae(root / "vae", **place)
        audio_encoder, a_report = load_audio_encoder(root / "audio_encoder", **place)
        text_encoder, x_report = load_text_encoder(root / "text_encoder", **place)
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            FlowMatchEulerDiscreteScheduler.load_config(str(root / "scheduler")))
        tokenizer = build_tokenizer(root / "tokenizer")
        check_tokenizer(tokenizer, text_encoder, str(root / "tokenizer"))
        pipe = cls(transformer, vae, audio_encoder, text_encoder, tokenizer, scheduler, pipeline_config)
        pipe.load_reports = [t_report, v_report, a_report, x_report]
        return pipe.to(device, dtype)

    def save_pretrained(self, directory: str | Path, *, transformer_state_dict: dict | None = None) -> None:
        """Write every component in the layout :meth:`from_pretrained` reads. ``transformer_state_dict``
        replaces the transformer's own weights (training: gathered from FSDP shards, EMA or LoRA-merged)."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        if transformer_state_dict is None:
            self.transformer.save_pretrained(root / "transformer", safe_serialization=True)
        else:
            from huggingface_hub import save_torch_state_dict

            self.transformer.save_config(root / "transformer")
            save_torch_state_dict(transformer_state_dict, root / "transformer",
                                  filename_pattern="diffusion_pytorch_model{suffix}.safetensors")
        self.vae.save_pretrained(root / "vae", safe_serialization=True)
        for name, module in (("audio_encoder", self.audio_encoder), ("text_encoder", self.text_encoder)):
            (root / name).mkdir(exist_ok=True)
            module.config.save_pretrained(root / name)
            save_model(module, str(root / name / "model.safetensors"))
        self.scheduler.save_config(root / "scheduler")
        self.tokenizer.save_pretrained(root / "tokenizer")
        (root / "pipeline_config.json").write_text(json.dumps(dataclasses.asdict(self.config), indent=2))
        (root / "model_index.json").write_text(json.dumps({
            "_class_name": "LipSyncPipeline",
            "transformer": ["lipsync.model.pipio.transformer_lipsync", "LipSyncTransformer3DModel"],
            "vae": ["diffusers", "AutoencoderKLLTXVideo"],
            "audio_encoder": ["transformers", "WhisperEncoder"],
            "text_encoder": ["transformers", "T5EncoderModel"],
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        }, indent=2))

    def to(self, device: str | torch.device, dtype: torch.dtype = torch.float32) -> "LipSyncPipeline":
        for module in (self.transformer, self.vae, self.audio_encoder, self.text_encoder):
            if module is None:  # the text encoder after place_text_encoder("drop")
                continue
            module.to(device="cpu" if module is self.text_encoder and self.text_encoder_placement == "cpu" else device)
            cast_module(module, dtype)  # a no-op where the dtypes already match
        self._prompt_cache.clear()
        return self

    # ------------------------------------------------------------------------------------------------ prompt
    def place_text_encoder(self, placement: str) -> None:
        """Where T5 lives: ``device`` (with the model), ``cpu`` (host memory: new prompts are encoded there, the
        embedding moved to the model's device), ``drop`` (the default prompt is encoded now, then T5 is freed;
        any other prompt is then refused with a ModelInputError on ``custom_prompt``)."""
        if placement not in ("device", "cpu", "drop"):
            raise ValueError(f"text encoder placement must be device, cpu or drop, got {placement!r}")
        if self.text_encoder is None:
            if placement != "drop":
                raise ValueError("the text encoder was dropped; reload the pipeline to place it again")
            return
        if placement == "drop":
            self.prompt_embedding(self.config.default_prompt)
            self.text_encoder = None
        else:
            self.text_encoder.to(self.device if placement == "device" else "cpu")
        self.text_encoder_placement = placement

    def prompt_embedding(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, tokens, d) T5 hidden states and (1, tokens) mask of ``prompt`` on the model's device; T5 runs only
        when the prompt is not among the last few encoded (a request's prompt is usually the constant default)."""
        key = (prompt, self.config.max_prompt_tokens)
        hit = self._prompt_cache.pop(key, None)
        if hit is None:
            if self.text_encoder is None:
                raise ModelInputError("this worker dropped its text encoder after start-up (LIPSYNC_TEXT_ENCODER=drop):"
                                      " only the default prompt can be used", field="custom_prompt")
            text, mask = encode_prompt(self.tokenizer, self.text_encoder, prompt, self.config.max_prompt_tokens)
            hit = (text.to(self.device, self.dtype), mask.to(self.device))
        self._prompt_cache[key] = hit  # most recent last
        while len(self._prompt_cache) > PROMPT_CACHE_SIZE:
            self._prompt_cache.pop(next(iter(self._prompt_cache)))
        return hit

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    # ------------------------------------------------------------------------------------------------ checks
    def check_inputs(self, frames: np.ndarray, mouth_mask: np.ndarray, generate: np.ndarray, audio: np.ndarray,
                     fps: float, face_id_embedding: np.ndarray | None, reference_frames: np.ndarray | None,
                     vae_chunk_size: int, vae_overlap_window_width: int, frame_block_width: int,
                     feed_forward_num_splits: int, face_id_cond_strength: int, appearance_cond_strength: int,
                     num_inference_steps: int, guidance_scale: float) -> None:
        multiple = self.config.vae_spatial_multiple
        if (not isinstance(frames, (np.ndarray, FrameStore)) or frames.dtype != np.uint8 or frames.ndim != 4
                or frames.shape[-1] != 3):
            raise ModelInputError(f"frames must be a (T, H, W, 3) uint8 array, got "
                                  f"{getattr(frames, 'dtype', type(frames))} {getattr(frames, 'shape', '')}",
                                  field="video")
        num_frames, height, width, _ = frames.shape
        if num_frames < 1 or height % multiple or width % multiple or height == 0 or width == 0:
            raise ModelInputError(f"frames must have T >= 1 and height/width multiples of {multiple}, got "
                                  f"{frames.shape}", field="video")
        if mouth_mask.shape != (num_frames, height, width):
            raise ModelInputError(f"mouth_mask must have shape {(num_frames, height, width)}, got {mouth_mask.shape}",
                                  field="video")
        if isinstance(mouth_mask, np.ndarray) and not (mouth_mask.min() >= 0 and mouth_mask.max() <= 1):  # NaN fails
            raise ModelInputError("mouth_mask values must lie in [0, 1]", field="video")
        if generate.shape != (num_frames,) or generate.dtype != np.bool_:
            raise ModelInputError(f"generate must be a ({num_frames},) bool array, got {generate.dtype} "
                                  f"{generate.shape}", field="video")
        if audio.ndim != 1 or not np.isfinite(audio).all():
            raise ModelInputError("audio must be a finite 1-D (mono) waveform", field="audio")
        if not fps > 0:
            raise ModelInputError(f"fps must be > 0, got {fps}", field="frame_rate")
        if vae_chunk_size < 9 or (vae_chunk_size - 1) % 8:
            raise ModelInputError(f"vae_chunk_size must be 8n+1 and >= 9, got {vae_chunk_size}", field="vae_chunk_size")
        if not 0 <= vae_overlap_window_width < vae_chunk_size:
            raise ModelInputError(f"vae_overlap_window_width must be in [0, vae_chunk_size={vae_chunk_size}), got "
                                  f"{vae_overlap_window_width}", field="vae_overlap_window_width")
        if frame_block_width < 1:
            raise ModelInputError(f"frame_block_width must be >= 1, got {frame_block_width}", field="frame_block_width")
        if feed_forward_num_splits < 1:
            raise ModelInputError(f"feed_forward_num_splits must be >= 1, got {feed_forward_num_splits}",
                                  field="feed_forward_num_splits")
        if face_id_cond_strength != -1 and not 0 <= face_id_cond_strength <= 16:
            raise ModelInputError(f"face_id_cond_strength must be -1 or 0..16, got {face_id_cond_strength}",
                                  field="face_id_cond_strength")
        if not 1 <= appearance_cond_strength <= 16:
            raise ModelInputError(f"appearance_cond_strength must be 1..16, got {appearance_cond_strength}",
                                  field="appearance_cond_strength")
        id_dim = self.transformer.config.id_embed_dim
        if face_id_embedding is not None and np.asarray(face_id_embedding).shape != (id_dim,):
            raise ModelInputError(f"face_id_embedding must have shape ({id_dim},), got "
                                  f"{np.asarray(face_id_embedding).shape}", field="face_id_cond_strength")
        if reference_frames is not None and (reference_frames.dtype != np.uint8 or reference_frames.ndim != 4
                                             or reference_frames.shape[1:] != (height, width, 3)):
            raise ModelInputError(f"reference_frames must be (R, {height}, {width}, 3) uint8, got "
                                  f"{reference_frames.dtype} {reference_frames.shape}", field="video")
        if generate.all() and reference_frames is None:
            raise ModelInputError("every frame is generated (image input) but no reference_frames were given: pass "
                                  "the image as reference_frames, it is the only appearance the model can see",
                                  field="video")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if guidance_scale < 1.0:
            raise ValueError(f"guidance_scale must be >= 1, got {guidance_scale}")

    def resolve_face_id_strength(self, strength: int, has_embedding: bool, any_generate: bool) -> tuple[int, str]:
        """The ``face_id_cond_strength = -1`` rule: 0 without an identity embedding; else the 'generate' value
        (8, nominal) when frames are synthesised from nothing (image input, additions, bridges: long synthetic
        spans drift), else the 'video' value (4: mouth inpainting already sees the real face)."""
        if strength == -1:
            if not has_embedding:
                return 0, "face_id_cond_strength -1 -> 0 (no face-ID embedding given)"
            cfg = self.config
            chosen = cfg.face_id_auto_strength_generate if any_generate else cfg.face_id_auto_strength_video
            reason = "frames are generated" if any_generate else "pure mouth inpainting"
            return chosen, f"face_id_cond_strength -1 -> {chosen} ({reason})"
        if strength > 0 and not has_embedding:
            return 0, f"face_id_cond_strength {strength} -> 0 (no face-ID embedding given)"
        return strength, ""

    # ------------------------------------------------------------------------------------------------ call
    def __call__(self, frames: np.ndarray, mouth_mask: np.ndarray, generate: np.ndarray, audio: np.ndarray,
                 fps: float, **kwargs) -> LipSyncPipelineOutput:
        """Generate lip-synced face-crop frames: :meth:`stream`'s arguments, all frames returned at once
        (:class:`LipSyncPipelineOutput` with ``frames`` (T, H, W, 3) uint8)."""
        result = self.stream(frames, mouth_mask, generate, audio, fps, **kwargs)
        output = np.empty(frames.shape, np.uint8)
        position = 0
        for chunk in result.chunks:
            output[position : position + len(chunk)] = chunk
            position += len(chunk)
        return LipSyncPipelineOutput(frames=output, notes=result.notes,
                                     face_id_cond_strength=result.face_id_cond_strength,
                                     vae_overlap_window_width=result.vae_overlap_window_width,
                                     num_frame_blocks=result.num_frame_blocks)

    @torch.no_grad()
    def stream(self, frames: np.ndarray, mouth_mask: np.ndarray, generate: np.ndarray, audio: np.ndarray,
               fps: float, *, prompt: str | None = None, face_id_embedding: np.ndarray | None = None,
               reference_frames: np.ndarray | None = None, vae_chunk_size: int = 65,
               vae_overlap_window_width: int = 16, frame_block_width: int = 136, feed_forward_num_splits: int = 2,
               face_id_cond_strength: int = -1, appearance_cond_strength: int = 1, seed: int = 42,
               num_inference_steps: int | None = None, guidance_scale: float | None = None,
               callback: ProgressCallback | None = None, encoded: Callable | None = None) -> LipSyncStream:
        """Denoise, then hand back the decode as a lazy stream of composited chunks (:class:`LipSyncStream`).

        Args:
            frames: (T, H, W, 3) uint8 face crops at the working size (H, W multiples of 32): an ndarray or a
                ``lipsync.media.frame_store.FrameStore`` (read a frame range at a time, never all at once).
            mouth_mask: (T, H, W) float32 in [0, 1]; 1 = regenerate (soft edges allowed). An ndarray, or any
                object with ``shape`` whose ``mask[index_array]`` gives those frames' masks (made on demand; its
                values are then its maker's responsibility).
            generate: (T,) bool; True = synthesise the whole frame (timeline additions, removal bridges, image
                input); those frames' pixels are ignored.
            audio: (N,) float32 mono waveform at ``config.audio_sample_rate`` (16 kHz) on the *output* timeline:
                frame j is heard at j / fps (shorter audio is silence-padded by clamping, longer is ignored).
            fps: output frame rate.
            prompt: text; None or "" uses ``config.default_prompt`` (noted).
            face_id_embedding: (id_embed_dim,) identity vector, or None.
            reference_frames: (R, H, W, 3) uint8 appearance references; None picks them evenly from the frames
                that are not ``generate``.
            vae_chunk_size, vae_overlap_window_width, frame_block_width, feed_forward_num_splits,
            face_id_cond_strength, appearance_cond_strength, seed: the request's schema fields (lipsync/model/README.md).
            num_inference_steps, guidance_scale: default to the config.
            callback: ``callback(stage, step, total, message)`` per VAE chunk, per block and per step; it may raise
                to cancel (propagated, nothing swallowed).
            encoded: ``encoded(name, compute)``: the condition and reference latents (the VAE encoder's whole work)
                through the worker's video-side cache (``lipsync.model.engine.EngineRequest.encoder_output``); None:
                computed.

        Returns:
            :class:`LipSyncStream`; its ``chunks`` run the VAE decode as they are read.
        """
        cfg = self.config
        steps = cfg.num_inference_steps if num_inference_steps is None else num_inference_steps
        guidance = cfg.guidance_scale if guidance_scale is None else guidance_scale
        if isinstance(mouth_mask, (np.ndarray, list, tuple)):
            mouth_mask = np.asarray(mouth_mask, dtype=np.float32)
        generate = np.asarray(generate)
        audio = np.asarray(audio, dtype=np.float32)

        # 1. Check inputs
        self.check_inputs(frames, mouth_mask, generate, audio, fps, face_id_embedding, reference_frames,
                          vae_chunk_size, vae_overlap_window_width, frame_block_width, feed_forward_num_splits,
                          face_id_cond_strength, appearance_cond_strength, steps, guidance)
        notify = callback or (lambda stage, step, total, message: None)
        device, dtype = self.device, self.dtype
        source = FrameSource(frames, mouth_mask, generate, self.vae.temporal_compression_ratio,
                              self.vae.spatial_compression_ratio)
        hw = source.latent_height * source.latent_width

        # 2. Resolve knobs (every automatic choice is noted and logged)
        notes: list[str] = []
        id_strength, note = self.resolve_face_id_strength(face_id_cond_strength, face_id_embedding is not None,
                                                          bool(generate.any()))
        notes += [note] if note else []
        plan, chunk_notes = plan_chunks(source.padded_frames, vae_chunk_size, vae_overlap_window_width,
                                        source.ratio_t)
        notes += chunk_notes
        blocks = plan_frame_blocks(source.num_latent, frame_block_width, source.ratio_t)
        if prompt is None or not prompt.strip():
            prompt = cfg.default_prompt
            notes.append(f"no prompt given and no captioning model configured: using the default {prompt!r}")

        # 3. Encode prompt and audio (only the audio the timeline can hear: the rest never reaches a window)
        text, text_mask = self.prompt_embedding(prompt)
        audio_windows = encode_audio_windows(self.audio_encoder, audio, source.padded_frames, source.num_latent, fps,
                                             cfg, self.transformer.config.audio_steps_per_frame,
                                             source.ratio_t)[None].to(device, dtype)  # (1, F, steps, layers, d)
        if guidance > 1.0:  # batch = [conditional, null audio]
            audio_windows = torch.cat([audio_windows, torch.zeros_like(audio_windows)])
            text, text_mask = text.repeat(2, 1, 1), text_mask.repeat(2, 1)
        batch = audio_windows.shape[0]

        # 4. Masked video latents + latent mask, references, identity, positions
        def condition() -> torch.Tensor:
            return encode_condition(self.vae, source, vae_chunk_size, plan.overlap, device, dtype,
                                    progress=lambda i, n: notify("vae_encode", i, n, f"VAE encode chunk {i}/{n}"))

        cond = condition() if encoded is None else torch.as_tensor(
            encoded(f"condition/{vae_chunk_size}/{plan.overlap}", condition)).to(device)  # a computed one unchanged
        references, reference_coords, bias, note = self._encode_references(frames, generate, reference_frames,
                                                                           appearance_cond_strength, encoded)
        notes += [note] if note else []
        id_embeds = None
        if id_strength > 0:
            id_embeds = torch.as_tensor(np.asarray(face_id_embedding, dtype=np.float32), device=device)[None]
            id_embeds = id_embeds.expand(batch, -1).to(dtype)
        conditioning = LipSyncConditioning(
            text=text, text_mask=text_mask, audio=audio_windows, id_embeds=id_embeds, id_scale=id_strength / 8.0,
            references=None if references is None else references.expand(batch, -1, -1),
            reference_coords=None if reference_coords is None else reference_coords.expand(batch, -1, -1),
            reference_bias=bias)
        video_coords = latent_coords(source.num_latent, source.latent_height, source.latent_width, fps,
                                     source.ratio_t, source.ratio_s, device)
        for line in notes:
            logger.info(line)

        # 5. Initial noise: the whole (padded) timeline in one draw, independent of blocks, chunks and splits
        generator = torch.Generator("cpu").manual_seed(int(seed) % 2**64)
        latents = torch.randn((1, self.transformer.config.in_channels, source.num_latent, source.latent_height,
                               source.latent_width), generator=generator)
        latents = pack_latents(latents.to(device))

        # 6. Timesteps: sigmas 1 -> 1/N with LTX's shift for the sequence length of one block
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler.config)  # per call: no shared state
        sc = scheduler.config
        mu = shift_mu(sc, (blocks[0].end - blocks[0].start) * hw)
        # The schedule stays on the host (as the scheduler keeps its sigmas): finding a step's index is then no
        # device-to-host sync; each block takes its timestep to the device.
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps), mu=mu, device="cpu")

        # 7. Denoising loop: per step, every block predicts, overlaps are blended, one Euler step
        for i, t in enumerate(scheduler.timesteps):
            velocity = self._predict_velocity(latents, cond, video_coords, t, blocks, hw, conditioning, guidance,
                                              feed_forward_num_splits, notify, f"step {i + 1}/{steps}")
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
            notify("denoise", i + 1, steps, f"denoising step {i + 1}/{steps}")

        # 8. Decode (chunked, streamed) and composite in pixel space
        latents = unpack_latents(latents, source.num_latent, source.latent_height, source.latent_width)
        chunks = self._decode_and_composite(denormalize_latents(self.vae, latents).to(dtype), source, vae_chunk_size,
                                            plan.overlap, notify)
        return LipSyncStream(chunks=chunks, notes=notes, face_id_cond_strength=id_strength,
                             vae_overlap_window_width=plan.overlap, num_frame_blocks=len(blocks))

    def _predict_velocity(self, latents: torch.Tensor, cond: torch.Tensor, video_coords: torch.Tensor,
                          t: torch.Tensor, blocks: list[FrameBlock], hw: int, conditioning: LipSyncConditioning,
                          guidance: float, ff_num_splits: int, notify: ProgressCallback, step: str) -> torch.Tensor:
        """The whole timeline's velocity: each frame block predicted on its own, overlaps blended linearly."""
        dtype, batch = self.dtype, conditioning.audio.shape[0]
        weights = self._block_weights_on(blocks, latents.shape[1] // hw, hw, latents.device)
        velocity = torch.zeros_like(latents)
        for b, (block, weight) in enumerate(zip(blocks, weights)):
            tokens = slice(block.start * hw, block.end * hw)
            block_conditioning = dataclasses.replace(
                conditioning, audio=conditioning.audio[:, block.start : block.end],
                reference_coords=place_references(conditioning.reference_coords, video_coords, block.start * hw))
            pred = self.transformer(
                latents[:, tokens].expand(batch, -1, -1).to(dtype), cond[:, tokens].expand(batch, -1, -1).to(dtype),
                t.to(latents.device, torch.float32).expand(batch),  # fp32: the sinusoidal embedding needs it
                video_coords[:, :, tokens].expand(batch, -1, -1), block.end - block.start, block_conditioning,
                ff_num_splits=ff_num_splits).float()
            if batch == 2:  # audio classifier-free guidance: [conditional, null audio]
                pred = pred[1:] + guidance * (pred[:1] - pred[1:])
            velocity[:, tokens] += weight * pred
            notify("block", b + 1, len(blocks), f"{step}, block {b + 1}/{len(blocks)}")
        return velocity

    def _block_weights_on(self, blocks: list[FrameBlock], num_latent: int, hw: int,
                          device: torch.device) -> list[torch.Tensor]:
        """Per block (1, tokens, 1) blend weights, made on ``device`` once per request shape: no host-to-device
        copy (a host sync) inside the step loop."""
        key = (tuple((b.start, b.end) for b in blocks), num_latent, hw, str(device))
        if key not in self._block_weights:
            self._block_weights = {key: [w.to(device).repeat_interleave(hw)[None, :, None]
                                         for w in block_weights(blocks, num_latent)]}
        return self._block_weights[key]

    @torch.no_grad()  # a generator: torch re-enters no-grad each time it is resumed
    def _decode_and_composite(self, latents: torch.Tensor, source: "FrameSource", chunk_size: int, overlap: int,
                              notify: ProgressCallback) -> Iterator[np.ndarray]:
        """Chunked decode; each finished frame range is composited over the input frames and yielded."""
        temb = None
        if self.vae.config.timestep_conditioning:  # LTX 0.9.1+: the decoder does the last denoising step
            temb = torch.full((1,), self.config.decode_timestep, device=latents.device, dtype=latents.dtype)
        position, num_frames = 0, len(source.frames)
        for segment in decode_chunked(self.vae, latents, chunk_size, overlap, temb,
                                      progress=lambda i, n: notify("vae_decode", i, n, f"VAE decode chunk {i}/{n}")):
            end = min(position + segment.shape[2], num_frames)  # frames past T are the 8n+1 padding
            if end > position:
                decoded = ((segment[0, :, : end - position].float().clamp(-1, 1) + 1) * 127.5).permute(1, 2, 3, 0)
                yield composite(source.frames[position:end], decoded.cpu().numpy(),
                                source.pixel_mask(np.arange(position, end)))
            position += segment.shape[2]

    def _encode_references(self, frames: np.ndarray, generate: np.ndarray, reference_frames: np.ndarray | None,
                           strength: int, encoded: Callable | None = None):
        """Appearance references -> clean latent tokens, RoPE coordinates outside the clip, and the key bias."""
        pool, index = (reference_frames, np.arange(len(reference_frames))) if reference_frames is not None \
            else (frames, np.flatnonzero(~generate))  # indices first: no copy of the video
        if len(index) == 0:
            return None, None, 0.0, "no appearance reference available (all frames generated, none given)"
        count = min(strength, self.config.max_reference_frames, len(index))
        picks = pool[index[np.linspace(0, len(index) - 1, count).round().astype(int)]]
        device, dtype = self.device, self.dtype
        made: list = []

        def both() -> list:
            if not made:
                made.extend(encode_reference_frames(self.vae, picks, self.config.reference_time_seconds, device, dtype))
            return made

        if encoded is None:
            tokens, coords = both()
        else:  # through the video-side cache (a computed tensor comes back unchanged)
            name = f"references/{len(index)}/{count}"
            tokens = torch.as_tensor(encoded(f"{name}/tokens", lambda: both()[0])).to(device, dtype)
            coords = torch.as_tensor(encoded(f"{name}/coords", lambda: both()[1])).to(device)
        return tokens, coords, reference_logit_bias(strength, count), ""
