"""The engine interface: what every lip-sync model behind the worker provides, and nothing more.

A worker runs one engine (``lipsync.model.weights.load_engine``), loaded once, called once per request. The worker owns
what is common to every model — probe, decode, timeline, face tracking, audio, paste-back, encode, progress,
cancel — and asks the engine only for what differs between models:

1. ``face_affines(track)``: the engine's crop rule. (T, 2, 3) frame → crop affines at ``info.crop_size`` for the
   output timeline's face track (MuseTalk: its landmark box; LatentSync: its similarity alignment; pipio: the
   head square), smoothed over time as the engine wants; NaN rows where no face is tracked.
2. ``crop(frames, affines)``: the crops, (n, S, S, 3) uint8 (the engine picks the resampling its model was
   trained with).
3. ``generate(request, batches)``: consumes :class:`CropBatch` items in timeline order, yields generated crops
   (any number of frames per item) in the same order, exactly ``request.num_frames`` in all. It pulls input only
   as far as it needs, so an engine that works frame by frame (MuseTalk) or segment by segment (LatentSync)
   keeps memory flat in video length. The crops are uint8, or float32 in pixel units (0-255 scale, neither
   clamped nor rounded) where the engine's authors resample their model's float output before quantising it
   (LatentSync's restore): the paste (``lipsync.media.paste``) then resamples in float and clamps and truncates
   once, at the end; a paste that has no float path takes ``paste.as_uint8`` of them (clamped, truncated).
4. ``blend_masks(request, start, landmarks)``: (n, S, S) float32 paste-back masks in crop coordinates for output
   frames ``start .. start + n - 1``; the worker warps crop and mask back with the inverse affine. Outside the
   mask the frame is never touched.

5. ``encoder_cache_key(request)``: what the engine's image-encoder outputs for this request depend on besides the
   crops, the weights and the device (a dict; None: nothing worth keeping). When it is not None and the worker's
   video-side cache is on (``lipsync.worker.video_cache``), ``request.encoded`` is set: the engine then gets each
   encoder output through ``request.encoded(name, compute)`` — the cached value (an ndarray of the same values),
   or ``compute()``'s — naming it by everything decided inside ``generate`` (its frames, its batching). The output
   must be the same bytes either way.

The engine logs through ``request.log`` (knobs it has no mechanism for are said once, not errors) and reports
progress through ``request.progress`` — which raises to cancel; an engine lets that exception propagate. It
fills ``request.metrics`` with what it actually used. No engine knows HTTP, Redis or storage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:  # lipsync.media.faces imports cv2/dlib lazily; the type is only for readers and checkers
    from lipsync.media.faces import FaceTrack


@dataclass(frozen=True)
class EngineOptions:
    """How the worker wants an engine loaded (from ``lipsync.contract.settings.Settings``)."""

    device: str = "cpu"
    """Torch device name, already resolved (``cuda``, ``cuda:1``, ``cpu``)."""
    dtype: str = "fp32"
    """``fp32``, ``fp16``, ``bf16``, or ``auto``: each engine resolves it with its own preference
    (``lipsync.model.devices.resolve_dtype``: what its authors' inference uses; fp16 on GPUs without bf16)."""
    num_inference_steps: int | None = None
    """Diffusion engines: steps override (``LIPSYNC_NUM_INFERENCE_STEPS``); None = the engine's default."""
    guidance_scale: float | None = None
    """Diffusion engines: audio guidance override (``LIPSYNC_GUIDANCE_SCALE``); None = the engine's default."""
    random_weights_config: str = "tiny"
    """pipio only: the config built with random weights when no weights folder is given."""
    face_crop_size: int = 0
    """Working-size override for engines whose size is free (pipio); 0 = the engine's default."""
    compile: bool = False
    """``torch.compile`` the repeated blocks at load and warm them up (``LIPSYNC_COMPILE``)."""
    text_encoder: str = "device"
    """Text-conditioned engines: ``device`` | ``cpu`` | ``drop`` (``LIPSYNC_TEXT_ENCODER``)."""
    deep_cache: bool = True
    """LatentSync: DeepCache as published (``LIPSYNC_DEEP_CACHE``)."""
    offload: str = "auto"
    """InfiniteTalk: ``auto`` | ``none`` | ``blocks``, the transformer's blocks streamed from host memory
    (``LIPSYNC_OFFLOAD``)."""


@dataclass(frozen=True)
class EngineInfo:
    """What a loaded engine is; goes into every request's metrics and the worker's start-up log."""

    name: str
    """Label with version, e.g. ``musetalk-1.5``, ``latentsync-1.6``, ``pipio``."""
    crop_size: int
    """Working size S of the square crops."""
    weights: str
    """Where the weights came from: a folder name, or ``random:<config>``."""
    random_weights_warning: str | None = None
    """Set when the engine runs untrained weights: logged at start and as a WARN in every request."""
    needs_identity: bool = False
    """The worker computes a face-ID embedding (``EngineRequest.identity``) only for engines that use one."""
    dtype: str = ""
    """The dtype it runs in (``auto`` resolved by the device policy, ``lipsync.model.devices``)."""
    restore_warp: tuple[int, int] | None = None
    """The engine's crops are a (W, H) aligned warp of the frame resized to S², pasted back by its authors'
    restore rule (``lipsync.media.paste``, ``restore_warp``: frame-pixel erosion and feather) instead of through
    ``blend_masks`` (LatentSync); None: through the blend masks."""
    affines_per_frame: bool = False
    """``face_affines(track)[i]`` depends on row ``i`` of the track alone (no smoothing across frames): the
    worker may then crop each frame during the tracking pass, as soon as its row is final, instead of
    decoding the video once more for the crops."""
    crops_reusable: bool = True
    """The worker may hand the engine crops from the video-side cache instead of calling ``crop`` (False: ``crop``
    computes more than the crops, e.g. MuseTalk's face parsing of the frame around each box)."""
    whole_frame: bool = False
    """The "crop" is the whole frame at the engine's generation size for the request's aspect ratio (InfiniteTalk:
    its resolution bucket): crops and blend masks are (n, h, w) for that size, not square, and ``crop_size`` is
    only the largest side any request can get."""


HOSTED_FEED_FORWARD_SPLITS = 2
"""The hosted schema's default ``feed_forward_num_splits``."""


def authors_feed_forward_splits(asked: int) -> tuple[int, str]:
    """(chunks, what to log) for an engine whose authors run the feed-forward layers whole (MuseTalk,
    LatentSync): the hosted default means theirs, one chunk (the kernels' shapes theirs: their output bit for bit
    on a CPU); any other value chunks as asked (less memory, the same maths in another summation order)."""
    if asked == HOSTED_FEED_FORWARD_SPLITS:
        return 1, f"feed_forward_num_splits {asked} (the hosted default): whole, as the authors run it"
    return asked, ""


@dataclass(frozen=True)
class Knobs:
    """The schema's model knobs, as validated at submit (``lipsync.contract.schema.LipsyncInput``)."""

    seed: int = 42
    frame_block_width: int = 136
    vae_chunk_size: int = 65
    vae_overlap_window_width: int = 16
    feed_forward_num_splits: int = HOSTED_FEED_FORWARD_SPLITS
    face_id_cond_strength: int = -1
    appearance_cond_strength: int = 1
    prompt: str | None = None
    """The custom prompt when ``use_custom_prompt`` is set, else None."""

    @classmethod
    def from_request(cls, params: Any) -> "Knobs":
        names = [f for f in cls.__dataclass_fields__ if f != "prompt"]
        prompt = params.custom_prompt if getattr(params, "use_custom_prompt", False) else None
        return cls(**{name: getattr(params, name) for name in names}, prompt=prompt)


@dataclass
class EngineRequest:
    """One request as an engine sees it: the output timeline, its audio and the knobs."""

    audio: np.ndarray
    """(N,) float32 mono 16 kHz on the OUTPUT timeline: output frame j is heard at j / fps."""
    fps: float
    num_frames: int
    generate: np.ndarray
    """(T,) bool: output frames with no source frame (additions, removal bridges); their crop is the held
    neighbouring frame's."""
    is_image: bool
    """The input was a still image (every crop is the same picture)."""
    knobs: Knobs
    log: Callable[[str], None]
    progress: Callable[[str, int, int], None]
    """``progress(stage, done, total)``; raises to cancel."""
    identity: np.ndarray | None = None
    """Face-ID embedding of the source face, when ``info.needs_identity``."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Filled by the engine: what it actually used (steps, batch sizes, resolved knobs)."""
    workdir: Path | None = None
    """The request's work folder, for what an engine spills to disk (``lipsync.media.frame_store``); None: the system's
    temporary folder."""
    encoded: Callable[[str, Callable[[], Any]], Any] | None = None
    """``encoded(name, compute)``: the image-encoder output ``name`` from the worker's video-side cache, or
    ``compute()`` (kept for later requests); None: compute it (no cache). See ``LipSyncEngine.encoder_cache_key``."""

    def encoder_output(self, name: str, compute: Callable[[], Any]) -> Any:
        return compute() if self.encoded is None else self.encoded(name, compute)


@dataclass
class CropBatch:
    """Consecutive crops of the output timeline, starting at output frame ``start``."""

    start: int
    crops: np.ndarray
    """(n, S, S, 3) uint8; zeros where ``present`` is False."""
    present: np.ndarray
    """(n,) bool: a face is tracked in this frame."""
    landmarks: np.ndarray
    """(n, 68, 2) float32 iBUG landmarks in crop coordinates; NaN where absent."""

    def __len__(self) -> int:
        return int(self.crops.shape[0])


class LipSyncEngine(Protocol):
    info: EngineInfo

    def face_affines(self, track: "FaceTrack") -> np.ndarray: ...

    def crop(self, frames: np.ndarray, affines: np.ndarray) -> np.ndarray: ...

    def blend_masks(self, request: EngineRequest, start: int, landmarks: np.ndarray) -> np.ndarray: ...

    def generate(self, request: EngineRequest, batches: Iterable[CropBatch]) -> Iterator[np.ndarray]: ...

    def encoder_cache_key(self, request: EngineRequest) -> dict[str, Any] | None: ...


def landmarks_to_crop(landmarks: np.ndarray, affines: np.ndarray) -> np.ndarray:
    """(n, 68, 2) frame landmarks through (n, 2, 3) affines → crop coordinates (NaN stays NaN)."""
    pts = landmarks.astype(np.float64)
    out = np.einsum("nij,nkj->nki", affines[:, :, :2], pts) + affines[:, None, :, 2]
    return out.astype(np.float32)
