"""The MuseTalk engine (1.5, and 1.0 from the same code): one UNet pass per frame on 256² face crops.

Per frame, as the published inference (scripts/inference.py, musetalk/models/vae.py) computes it:

1. audio tokens: the frame's whisper window + the sinusoidal positional encoding (``audio_features``);
2. image latents: the crop RGB in [-1, 1], and a copy with its lower half (rows ≥ 128) zeroed before the
   normalisation (so -1), both through the VAE encoder; the posterior is *sampled* (mean + std·noise, as the
   reference's ``latent_dist.sample()``), the noise drawn from a generator seeded with the request's ``seed``,
   one (2, 4, 32, 32) draw per frame in frame order (masked, then reference), and scaled by the VAE's scaling factor; UNet input = cat(masked latent, reference latent) on channels;
3. one UNet pass at timestep 0 with the audio tokens as ``encoder_hidden_states``; its output is the latent;
4. decode with 1/scaling, ``(x / 2 + 0.5).clamp(0, 1)``, ×255, round, uint8.

The frame is its own reference (as in the reference script, where both latents come from the same crop). A
still image is encoded once and that one latent serves every frame (the reference cycles its single latent);
only the mouth moves. Frames the timeline synthesises (additions, removal bridges) carry the held neighbouring
frame's crop and are lip-synced like any other.

Batched: the UNet runs ``frame_block_width`` frames per call, the VAE ``vae_chunk_size`` per call; one upload
and one download per UNet batch, nothing per frame on the host.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lipsync.model.devices import (
    BatchFit, bytes_per_item, configure_backends, fit_batch, in_halves_on_oom, resolve_dtype, torch_dtype,
)
from lipsync.model.engine import CropBatch, EngineInfo, EngineOptions, EngineRequest, authors_feed_forward_splits
from lipsync.model.musetalk import audio_features as af
from lipsync.model.musetalk import face_parsing
from lipsync.model.musetalk.crop_rule import (
    CROP_SIZE, BoxRule, affine_box, box_affines, crop_boxes, lower_face_masks,
)
from lipsync.model.musetalk.loading import MuseTalkNetworks, load_networks
from lipsync.model.weights import WeightsFolderError, WeightsLayout

log = logging.getLogger(__name__)

_LUT = torch.from_numpy((np.arange(256) / 255.0).astype(np.float32))
"""uint8 → [0, 1] exactly as the reference's float64 ``/ 255.`` then float32."""


@dataclass(frozen=True)
class Variant:
    name: str
    unet_config: str
    unet_weights: str
    box: BoxRule


VARIANTS = {
    "musetalk-1.5": Variant("musetalk-1.5", "musetalkV15/musetalk.json", "musetalkV15/unet.pth",
                            BoxRule(bbox_shift=0, extra_margin=10)),
    "musetalk-1.0": Variant("musetalk-1.0", "musetalk/musetalk.json", "musetalk/pytorch_model.bin",
                            BoxRule(bbox_shift=0, extra_margin=0)),
}


def feed_forward_chunks(unet: torch.nn.Module, splits: int, latent_side: int) -> int:
    """diffusers' feed-forward chunking (``BasicTransformerBlock.set_chunk_feed_forward`` over tokens) in every
    transformer block of the UNet, each block's chunk a divisor of its token count (latent_side² at the top
    level, /4 per level down). Returns the number of chunks actually used at the top level (≤ ``splits``)."""
    levels = len(unet.down_blocks)
    blocks = [(i, b) for i, b in enumerate(unet.down_blocks)]
    blocks += [(levels - 1, unet.mid_block)] + [(levels - 1 - j, b) for j, b in enumerate(unet.up_blocks)]
    top = 1
    for level, block in blocks:
        tokens = max(1, latent_side >> level) ** 2
        n = max(d for d in range(1, max(1, splits) + 1) if tokens % d == 0)
        for attention in getattr(block, "attentions", None) or []:
            for tb in getattr(attention, "transformer_blocks", []):
                tb.set_chunk_feed_forward(tokens // n if n > 1 else None, dim=1)
        if level == 0:
            top = n
    return top


class MuseTalkEngine:
    def __init__(self, nets: MuseTalkNetworks, variant: Variant, info: EngineInfo, device: str, dtype: torch.dtype,
                 parser: torch.nn.Module | None = None):
        self.nets = nets
        self.parser = parser
        """The published face parser (``face-parse-bisent/``) when its files are in the folder: the blend masks
        are then its "jaw" region (``face_parsing``), computed from the frame when it is cropped; else the
        landmark-drawn region (``crop_rule.lower_face_mask``)."""
        self._parsed: dict[bytes, np.ndarray] = {}  # crop digest → its jaw mask, from ``crop`` until ``generate``
        self._masks: dict[int, np.ndarray] = {}  # output frame → its jaw mask, from ``generate`` to ``blend_masks``
        self.variant = variant
        self.info = info
        self.device = torch.device(device)
        self.dtype = dtype
        self.scaling = float(nets.vae.config.scaling_factor)
        self.latent_side = CROP_SIZE // (2 ** (len(nets.vae.config.block_out_channels) - 1))
        self.lut = _LUT.to(self.device)
        self.group_bytes_per_frame = self.vae_bytes_per_frame = 0.0  # a CPU: no caps
        self._calibrate()

    # ---------------------------------------------------------------------------------------- face rule
    def face_affines(self, track) -> np.ndarray:
        return box_affines(track.landmarks, track.frame_size, self.variant.box)

    def crop(self, frames: np.ndarray, affines: np.ndarray) -> np.ndarray:
        crops = crop_boxes(frames, affines)
        if self.parser is not None:  # the published parsing sees the frame around the box: done here
            for k, (frame, m) in enumerate(zip(frames, affines)):
                box = affine_box(m, CROP_SIZE) if np.isfinite(m).all() else None
                if box is not None:
                    self._parsed[_digest(crops[k])] = face_parsing.jaw_blend_mask(
                        self.parser, np.asarray(frame), box, CROP_SIZE, self.device)
        return crops

    def blend_masks(self, request: EngineRequest, start: int, landmarks: np.ndarray) -> np.ndarray:
        masks = lower_face_masks(landmarks, CROP_SIZE)
        if self.parser is not None:
            for k in range(len(masks)):
                parsed = self._masks.pop(start + k, None)
                if parsed is not None:
                    masks[k] = parsed
        return masks

    def _note_masks(self, request: EngineRequest, batches: Iterable[CropBatch]) -> Iterator[CropBatch]:
        """Pass the batches on, keeping each output frame's parsed mask (found by its crop) for ``blend_masks``;
        a crop that was not cut here (the worker's cache) keeps the landmark mask."""
        self._masks = {}
        try:
            for batch in batches:
                if self.parser is not None:
                    for k in np.flatnonzero(batch.present):
                        key = _digest(batch.crops[k])
                        mask = self._parsed.get(key) if request.is_image else self._parsed.pop(key, None)
                        if mask is not None:
                            self._masks[batch.start + int(k)] = mask
                yield batch
        finally:
            self._parsed.clear()  # nothing of this request's crops is kept past it

    # ---------------------------------------------------------------------------------------- forward
    def audio_tokens(self, audio: np.ndarray, num_frames: int, fps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(padded whisper states on the device, (T,) window starts on the device)."""
        states = af.encoder_states(audio, self.nets.feature_extractor, self.nets.audio_encoder)
        padded = af.pad_states(states, num_frames, fps)
        starts = torch.from_numpy(af.window_starts(num_frames, fps)).to(self.device)
        return padded, starts

    def encode(self, crops: torch.Tensor, generator: torch.Generator, vae_batch: int) -> torch.Tensor:
        """(n, S, S, 3) uint8 on the device → (n, 8, s, s) UNet input latents: cat(masked, reference)."""
        return self.sample_latents(self.posterior(crops, vae_batch), generator)

    def posterior(self, crops: torch.Tensor, vae_batch: int) -> torch.Tensor:
        """(n, S, S, 3) uint8 on the device → (2, 2n, 4, s, s): the VAE posterior's (mean, std) of the masked crops,
        then of the crops (the references). The image encoder's whole work: what the video-side cache keeps."""
        size = crops.shape[1]
        # contiguous (n, 3, S, S) as the published preprocess_img builds it: a channels-last view takes another
        # convolution kernel in the VAE encoder
        img = self.lut[crops.long()].permute(0, 3, 1, 2).contiguous()
        masked = img.clone()
        masked[:, :, size // 2 :, :] = 0.0
        pixels = ((torch.cat([masked, img]) - 0.5) / 0.5).to(self.dtype)
        means, stds = [], []
        for chunk in pixels.split(vae_batch):
            dist = self.nets.vae.encode(chunk).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
        return torch.stack([torch.cat(means), torch.cat(stds)])

    def sample_latents(self, posterior: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(2, 2n, 4, s, s) posterior → (n, 8, s, s) sampled, scaled latents: cat(masked, reference)."""
        mean, std = posterior[0], posterior[1]
        n = mean.shape[0] // 2
        # one draw per frame, in frame order, (masked, reference) each: the noise does not depend on the batching
        shape = (2, *mean.shape[1:])
        noise = torch.stack([torch.randn(shape, generator=generator, device=mean.device, dtype=mean.dtype)
                             for _ in range(n)], dim=1).flatten(0, 1)
        latents = self.scaling * (mean + std * noise)
        return torch.cat([latents[:n], latents[n:]], dim=1)

    def decode(self, latents: torch.Tensor, vae_batch: int) -> torch.Tensor:
        """(n, 4, s, s) → (n, S, S, 3) uint8 on the device."""
        out = []
        for chunk in latents.split(vae_batch):
            image = self.nets.vae.decode((1 / self.scaling) * chunk.to(self.dtype)).sample
            image = (image / 2 + 0.5).clamp(0, 1)
            out.append((image.permute(0, 2, 3, 1).float() * 255).round().to(torch.uint8))
        return torch.cat(out)

    def unet(self, latents: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        timestep = torch.zeros(1, dtype=torch.long, device=latents.device)
        return self.nets.unet(latents.to(self.dtype), timestep, encoder_hidden_states=tokens).sample

    def generate(self, request: EngineRequest, batches: Iterable[CropBatch]) -> Iterator[np.ndarray]:
        batches = self._note_masks(request, batches)
        k = request.knobs
        device = str(self.device)
        # The VAE runs over a UNet batch's frames, so its batch is at most the UNet batch, and both are live
        # together: a UNet batch of n frames costs n * (group + vae) while the VAE batch asked is larger.
        group, vae = self.group_bytes_per_frame, self.vae_bytes_per_frame
        vae_asked = max(1, k.vae_chunk_size)
        what = "MuseTalk UNet batch (frame_block_width)"
        unet_fit = fit_batch(k.frame_block_width, group + vae, device, what=what)
        if vae_asked < unet_fit.size:
            unet_fit = fit_batch(k.frame_block_width, group, device, what=what, reserve_bytes=vae_asked * vae)
        unet_batch = unet_fit.size
        # on the GPU the VAE batch is at most the UNet batch (the memory plan above); elsewhere as asked
        vae_batch = min(vae_asked, unet_batch) if device.startswith("cuda") else vae_asked
        vae_fit = BatchFit(vae_batch, vae_asked, "" if vae_batch == vae_asked else
                           f"MuseTalk VAE batch (vae_chunk_size): {vae_asked} asked, {vae_batch} used: at most the "
                           f"UNet batch")
        asked, why = authors_feed_forward_splits(k.feed_forward_num_splits)
        splits = feed_forward_chunks(self.nets.unet, asked, self.latent_side)
        self._say_knobs(request, unet_batch, vae_batch, splits)
        if why:
            request.log(f"MuseTalk: {why}")
        for fit in (unet_fit, vae_fit):
            if fit.bound:
                request.log(fit.why)
        with torch.inference_mode():
            padded, starts = self.audio_tokens(request.audio, request.num_frames, request.fps)
            tokens_per_frame = af.WINDOW * padded.shape[1]
            pe = af.sinusoidal_encoding(tokens_per_frame, padded.shape[2]).to(self.device, self.dtype)
        request.metrics.update(unet_batch=unet_batch, vae_batch=vae_batch, feed_forward_splits=splits,
                               posterior="sample", seed=int(k.seed))
        generator = torch.Generator(self.device).manual_seed(int(k.seed))
        still: dict[str, torch.Tensor] = {}
        done = 0
        for start, crops, present in _regroup(batches, unet_batch):
            out = np.array(crops, copy=True)
            idx = np.flatnonzero(present)
            if idx.size:
                state = generator.get_state()  # an out-of-memory retry draws the same noise again

                def render(part: np.ndarray) -> list[np.ndarray]:
                    if len(part) < len(idx) and part[0] == idx[0]:
                        generator.set_state(state)
                    return [self._render(request, crops, start, part, generator, vae_batch, padded, starts, pe, still)]

                out[idx] = np.concatenate(in_halves_on_oom(render, idx, what="MuseTalk", say=request.log))
            done += len(out)
            request.progress("MuseTalk: frame", done, request.num_frames)
            yield out

    @torch.inference_mode()
    def _render(self, request: EngineRequest, crops: np.ndarray, start: int, idx: np.ndarray,
                generator: torch.Generator, vae_batch: int, padded, starts, pe, still: dict) -> np.ndarray:
        """Frames ``idx`` of a UNet batch: encode (masked, reference), one UNet pass, decode; on the host."""
        if request.is_image:
            if "latent" not in still:
                still["latent"] = self.sample_latents(self._posterior(request, crops, start, idx[:1], vae_batch),
                                                      generator)
            latents = still["latent"].expand(idx.size, -1, -1, -1).contiguous()
        else:
            latents = self.sample_latents(self._posterior(request, crops, start, idx, vae_batch), generator)
        frame_starts = starts[torch.from_numpy(start + idx).to(self.device)]
        tokens = af.frame_windows(padded, frame_starts).to(self.dtype) + pe
        pred = self.unet(latents, tokens)
        return self.decode(pred, vae_batch).cpu().numpy()

    def _posterior(self, request: EngineRequest, crops: np.ndarray, start: int, idx: np.ndarray,
                   vae_batch: int) -> torch.Tensor:
        """``posterior`` of output frames ``start + idx``, through the video-side cache when the worker has one (its
        name: the frames and the VAE batch, which decide the bytes)."""
        def compute() -> torch.Tensor:
            x = torch.from_numpy(np.ascontiguousarray(crops[idx])).to(self.device, non_blocking=True)
            return self.posterior(x, vae_batch)

        frames = hashlib.blake2b((start + idx).astype(np.int64).tobytes(), digest_size=8).hexdigest()
        value = request.encoder_output(f"posterior/{start + int(idx[0])}/{idx.size}/{frames}/{vae_batch}", compute)
        return torch.as_tensor(value).to(self.device, self.dtype)  # a computed tensor passes unchanged

    def encoder_cache_key(self, request: EngineRequest) -> dict:
        """The VAE posteriors depend on the crops, the weights, the dtype and the batching (in each name)."""
        return {"encoder": "musetalk-vae-posterior", "dtype": self.info.dtype}

    def _calibrate(self) -> None:
        """Device memory a frame costs, measured once at load on this GPU: in a UNet batch (its crops on the
        device, the encode's inputs, latents, the UNet pass; the VAE one frame at a time) and in a VAE batch
        (the larger of encode and decode). Requests size their batches from them and the memory free then."""
        device = str(self.device)
        side, width = self.latent_side, self.nets.unet.config.cross_attention_dim
        generator = torch.Generator(self.device).manual_seed(0)

        def crops(n: int) -> torch.Tensor:
            return torch.zeros(n, CROP_SIZE, CROP_SIZE, 3, dtype=torch.uint8, device=self.device)

        def group(n: int) -> None:
            latents = self.encode(crops(n), generator, 1)
            pred = self.unet(latents, torch.zeros(n, 50, width, device=self.device, dtype=self.dtype))
            self.decode(pred, 1)

        with torch.inference_mode():
            self.group_bytes_per_frame = bytes_per_item(group, device)
            self.vae_bytes_per_frame = max(
                bytes_per_item(lambda n: self.encode(crops(1).expand(n, -1, -1, -1), generator, n), device),
                bytes_per_item(lambda n: self.decode(torch.zeros(n, 4, side, side, device=self.device), n), device))
        if self.group_bytes_per_frame:
            log.info("MuseTalk on %s: %.0f MiB a frame of a UNet batch, %.0f MiB a frame of a VAE batch", device,
                     self.group_bytes_per_frame / 2**20, self.vae_bytes_per_frame / 2**20)

    @staticmethod
    def _say_knobs(request: EngineRequest, unet_batch: int, vae_batch: int, splits: int) -> None:
        k = request.knobs
        request.log(f"MuseTalk: UNet batch {unet_batch} frames (frame_block_width), VAE batch {vae_batch} "
                    f"(vae_chunk_size), feed-forward in {splits} chunk(s) (feed_forward_num_splits "
                    f"{k.feed_forward_num_splits}), VAE posterior sampled with seed {k.seed}")
        unused = [f"vae_overlap_window_width={k.vae_overlap_window_width}",
                  f"face_id_cond_strength={k.face_id_cond_strength}",
                  f"appearance_cond_strength={k.appearance_cond_strength}",
                  "custom_prompt" + (" (given)" if k.prompt else " (none)")]
        request.log("MuseTalk has no mechanism for " + ", ".join(unused) + ": accepted, not used")


def _digest(crop: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(crop).tobytes(), digest_size=16).digest()


def _regroup(batches: Iterable[CropBatch], size: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(start, crops, present) in runs of ``size`` frames (the last may be shorter), pulling lazily."""
    crops: list[np.ndarray] = []
    present: list[np.ndarray] = []
    start = have = 0
    for batch in batches:
        if not have:
            start = batch.start
        crops.append(batch.crops)
        present.append(batch.present)
        have += len(batch)
        while have >= size:
            c, p = np.concatenate(crops), np.concatenate(present)
            yield start, c[:size], p[:size]
            crops, present = ([c[size:]], [p[size:]]) if have > size else ([], [])
            start, have = start + size, have - size
    if have:
        yield start, np.concatenate(crops), np.concatenate(present)


def load_engine(root: Path | None, layout: WeightsLayout, options: EngineOptions) -> MuseTalkEngine:
    if root is None:
        raise WeightsFolderError("the MuseTalk engine needs its weights folder (LIPSYNC_WEIGHTS_DIR)")
    variant = VARIANTS[layout.variant]
    dtype_name = resolve_dtype(options.dtype, options.device, prefer="fp16")  # the authors' inference: fp16
    dtype = torch_dtype(dtype_name)
    configure_backends(options.device, repeated_shapes=True)
    nets = load_networks(root, variant.unet_config, variant.unet_weights).to(options.device, dtype)
    for name, value in (("num_inference_steps", options.num_inference_steps),
                        ("guidance_scale", options.guidance_scale)):
        if value is not None:
            log.info("%s: %s=%s is ignored (one UNet pass per frame, no guidance)", variant.name, name, value)
    parser = None
    if face_parsing.has_parser(root):  # fp32, as the published inference runs it
        parser = face_parsing.load_parser(root).to(options.device)
        log.info("%s: face-parse-bisent found; the blend mask is the published BiSeNet 'jaw' region", variant.name)
    else:
        log.info("%s: no face-parse-bisent files; the blend mask is the 'jaw' region drawn from the landmarks",
                 variant.name)
    # the parser sees the frame around each box in ``crop``: crops from the video-side cache would skip it
    info = EngineInfo(name=variant.name, crop_size=CROP_SIZE, weights=root.name, dtype=dtype_name,
                      crops_reusable=parser is None)
    log.info("%s loaded from %s on %s/%s", variant.name, root, options.device, dtype_name)
    return MuseTalkEngine(nets, variant, info, options.device, dtype, parser=parser)
