"""The MuseTalk engine against the published recipe, computed here step by step with the stock library
classes (loaded independently of our loader), on random weights in the published layout; the face box rule,
the blend mask, batching and the audio's reach."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from lipsync.model.engine import CropBatch, EngineOptions, EngineRequest, Knobs
from lipsync.model.musetalk.crop_rule import BoxRule, box_affine, box_affines, crop_boxes, landmark_boxes
from lipsync.model.weights import load_engine

FPS, T = 25.0, 5


@pytest.fixture(scope="module")
def engine(musetalk_dir):
    return load_engine(musetalk_dir, EngineOptions(), None)


@pytest.fixture(scope="module")
def face():
    """The astronaut with her dlib landmarks (frame pixels)."""
    from lipsync.media.faces import DlibFaceAnalyzer

    frame = np.ascontiguousarray(skimage.data.astronaut())
    return frame, DlibFaceAnalyzer().detect(frame)[0].landmarks


def _crops(face, n: int = T) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n crops of the face drifting by a pixel per frame: (crops, affines, frames)."""
    frame, lm = face
    frames = np.stack([np.roll(frame, i, axis=1) for i in range(n)])
    lms = np.stack([lm + [i, 0] for i in range(n)])
    affines = box_affines(lms, (frame.shape[1], frame.shape[0]), BoxRule(smooth_window=1))
    return crop_boxes(frames, affines), affines, frames


def _speech(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * (180 + 40 * seed) * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
            + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def _request(audio: np.ndarray, n: int = T, **knobs) -> EngineRequest:
    logs: list[str] = []
    return EngineRequest(audio=audio, fps=FPS, num_frames=n, generate=np.zeros(n, bool), is_image=False,
                         knobs=Knobs(**knobs), log=logs.append, progress=lambda *a: None)


def _run(engine, request: EngineRequest, crops: np.ndarray, chunk: int = 3) -> np.ndarray:
    batches = [CropBatch(s, crops[s : s + chunk], np.ones(len(crops[s : s + chunk]), bool),
                         np.zeros((len(crops[s : s + chunk]), 68, 2), np.float32)) for s in range(0, len(crops), chunk)]
    return np.concatenate(list(engine.generate(request, batches)))


def reference_recipe(root: Path, crops: np.ndarray, audio: np.ndarray, fps: float, seed: int,
                     unet_batch: int, vae_batch: int | None = None, dtype: torch.dtype = torch.float32) -> np.ndarray:
    """TMElyralab/MuseTalk's scripts/inference.py for crops that are already 256² RGB, step by step; ``dtype``
    fp16 is its ``--use_float16`` (UNet, VAE, whisper and the positional encoding halved; the whisper features
    and latents cast to the UNet's dtype)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoFeatureExtractor, WhisperModel

    unet = UNet2DConditionModel(**json.loads((root / "musetalkV15/musetalk.json").read_text()))
    unet.load_state_dict(torch.load(root / "musetalkV15/unet.pth", weights_only=True))
    unet = unet.to(dtype)
    vae = AutoencoderKL.from_pretrained(root / "sd-vae").to(dtype)
    whisper = WhisperModel.from_pretrained(root / "whisper").eval().to(dtype)
    extractor = AutoFeatureExtractor.from_pretrained(root / "whisper")
    with torch.no_grad():
        # audio_processor.get_audio_feature + get_whisper_chunk
        seg = 30 * 16000
        feats = [whisper.encoder(extractor(audio[i : i + seg], return_tensors="pt", sampling_rate=16000)
                                 .input_features.to(dtype), output_hidden_states=True).hidden_states
                 for i in range(0, len(audio), seg)]
        whisper_feature = torch.cat([torch.stack(f, dim=2) for f in feats], dim=1)
        mult = 50 / fps
        whisper_feature = whisper_feature[:, : math.floor(len(audio) / 16000 * 50)]
        pad = math.ceil(mult)
        whisper_feature = torch.cat([torch.zeros_like(whisper_feature[:, : pad * 2]), whisper_feature,
                                     torch.zeros_like(whisper_feature[:, : pad * 3 * 2])], 1)
        chunks = [whisper_feature[:, math.floor(i * mult) : math.floor(i * mult) + 10] for i in range(len(crops))]
        prompts = torch.cat(chunks).flatten(1, 2)  # (T, 10 * 5, 384), time-major
        # PositionalEncoding(d_model=384)
        position = torch.arange(0, 5000, dtype=torch.float).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, 384, 2).float() * (-math.log(10000.0) / 384))
        pe = torch.zeros(5000, 384)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(position * div_term), torch.cos(position * div_term)
        pe = pe.to(dtype)
        # vae.get_latents_for_unet: the crop in [0, 1] (float64 / 255 -> float32), its lower half zeroed, both to
        # [-1, 1]; the posterior sampled with noise from the seeded generator, one (2, 4, 32, 32) draw per frame
        # (masked, reference). ``vae_batch`` None encodes frame by frame, as published; else the images
        # [masked..., full...] of a UNet batch go through the encoder ``vae_batch`` at a time (the engine's
        # batching: batched CPU convolutions round differently, and random weights amplify that)
        generator = torch.Generator().manual_seed(seed)
        half = torch.zeros(256, 256)
        half[:128] = 1
        out = []
        for s in range(0, len(crops), unet_batch):  # datagen batches
            # contiguous: the published per-frame (1, 3, 256, 256) tensor (strides (3, 1, 768, 3)) takes the
            # contiguous kernels, not the channels-last ones a batched transpose would take
            x = torch.FloatTensor(np.transpose(crops[s : s + unet_batch] / 255.0, (0, 3, 1, 2))).contiguous()
            images = torch.cat([(x * (half > 0.5) - 0.5) / 0.5, (x - 0.5) / 0.5])
            step = vae_batch or 1
            order = (torch.arange(len(images)).view(2, -1).T.flatten() if vae_batch is None
                     else torch.arange(len(images)))  # per frame: masked j, full j
            dists = [vae.encode(images[order[i : i + step]].to(dtype)).latent_dist for i in range(0, len(images), step)]
            mean = torch.cat([d.mean for d in dists])[torch.argsort(order)]
            std = torch.cat([d.std for d in dists])[torch.argsort(order)]
            noise = torch.stack([torch.randn((2, 4, 32, 32), generator=generator, dtype=dtype) for _ in range(len(x))],
                                1)
            latents = vae.config.scaling_factor * (mean + std * noise.flatten(0, 1))
            batch = torch.cat([latents[: len(x)], latents[len(x) :]], dim=1)
            tokens = prompts[s : s + unet_batch] + pe[None, : prompts.shape[1]]
            pred = unet(batch, torch.tensor([0]), encoder_hidden_states=tokens).sample
            decoded = [vae.decode((1 / vae.config.scaling_factor) * p).sample
                       for p in pred.split(vae_batch or len(pred))]
            image = (torch.cat(decoded) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()
            out.append((image * 255).round().astype("uint8"))
    return np.concatenate(out)


def test_engine_equals_the_published_recipe(engine, musetalk_dir, face):
    crops, _, _ = _crops(face)
    audio = _speech(T / FPS, 1)
    ours = _run(engine, _request(audio, frame_block_width=4, vae_chunk_size=3, seed=7), crops)
    same_batches = reference_recipe(musetalk_dir, crops, audio, FPS, seed=7, unet_batch=4, vae_batch=3)
    assert ours.shape == same_batches.shape == (T, 256, 256, 3)
    assert np.array_equal(ours, same_batches)
    # the published batching (the VAE encodes frame by frame, decodes a UNet batch at once): the same up to
    # float rounding of batched convolutions (on random weights, a few levels on a few pixels)
    published = reference_recipe(musetalk_dir, crops, audio, FPS, seed=7, unet_batch=4)
    diff = np.abs(ours.astype(int) - published.astype(int))
    assert diff.max() <= 4 and diff.mean() < 0.2, (diff.max(), diff.mean())


def test_batching_and_feed_forward_chunks_do_not_change_the_output(engine, face):
    crops, _, _ = _crops(face)
    audio = _speech(T / FPS, 1)
    a = _run(engine, _request(audio, frame_block_width=4, vae_chunk_size=3, feed_forward_num_splits=1), crops)
    b = _run(engine, _request(audio, frame_block_width=136, vae_chunk_size=65, feed_forward_num_splits=4), crops, 5)
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 4 and diff.mean() < 0.2, (diff.max(), diff.mean())  # float rounding only
    c = _run(engine, _request(audio, seed=43), crops)
    assert not np.array_equal(a, c)  # the seed is the posterior's generator


def test_audio_changes_only_the_masked_region(engine, face):
    from lipsync.media.paste import paste_face

    crops, affines, frames = _crops(face, 4)
    a = _run(engine, _request(_speech(4 / FPS, 1), 4), crops)
    b = _run(engine, _request(_speech(4 / FPS, 2), 4), crops)
    assert np.abs(a.astype(int) - b.astype(int)).max() > 8  # the audio reaches the UNet
    frame, lm = face
    for k in range(4):
        crop_lm = (lm + [k, 0]) @ affines[k][:, :2].T + affines[k][:, 2]
        mask = engine.blend_masks(_request(_speech(0.2, 1), 4), k, crop_lm[None].astype(np.float32))[0]
        pa = paste_face(frames[k], a[k], affines[k], mask)
        pb = paste_face(frames[k], b[k], affines[k], mask)
        inverse = cv2.warpAffine(mask, affines[k], (frame.shape[1], frame.shape[0]),
                                 flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        changed = np.abs(pa.astype(int) - pb.astype(int)).max(-1) > 0
        outside = inverse == 0
        assert changed.any() and not (changed & outside).any()
        assert np.array_equal(pa[outside], frames[k][outside])  # outside the mask the frame is untouched


def test_still_image_is_encoded_once(engine, face):
    """A still: one latent (one posterior draw) serves every frame, as the reference cycles its single latent;
    the frames differ by the audio only."""
    crops, _, _ = _crops(face, 1)
    still = np.broadcast_to(crops[0], (4, *crops.shape[1:]))
    audio = _speech(4 / FPS, 1)
    image = _request(audio, 4, vae_chunk_size=1)  # VAE calls of one image: no batched-convolution rounding
    image.is_image = True
    out = _run(engine, image, still)
    video = _run(engine, _request(audio, 4, vae_chunk_size=1), still)  # as a video: a fresh draw per frame
    diff = [np.abs(out[k].astype(int) - video[k].astype(int)).mean() for k in range(4)]
    assert diff[0] < 0.05 and min(diff[1:]) > 1, diff  # frame 0: the same draw (up to batched-conv rounding)
    assert not np.array_equal(out[0], out[3])  # the audio moves the mouth


def test_face_box_rule_is_the_published_one(face):
    frame, lm = face
    h, w = frame.shape[:2]
    (x1, y1, x2, y2), = landmark_boxes(lm[None], (w, h), BoxRule())
    ilm = lm.astype(np.int32)
    chin, nose = ilm[:, 1].max(), ilm[29, 1]
    assert (x1, x2) == (ilm[:, 0].min(), ilm[:, 0].max())
    assert y1 == max(0, nose - (chin - nose)) and y2 == min(chin + 10, h)
    box = np.array([x1, y1, x2, y2])
    crop = crop_boxes(frame[None], box_affine(box)[None])[0]
    expected = cv2.resize(frame[int(y1) : int(y2), int(x1) : int(x2)], (256, 256), interpolation=cv2.INTER_LANCZOS4)
    assert np.array_equal(crop, expected)
    # the affine maps pixel centres the way cv2.resize does: the box's corners land half a pixel outside
    m = box_affine(box)
    assert np.allclose(m @ [x1 - 0.5, y1 - 0.5, 1], [-0.5, -0.5])
    assert np.allclose(m @ [x2 - 0.5, y2 - 0.5, 1], [255.5, 255.5])
    # v1.0: no extra margin; smoothing keeps a still face still and averages jitter
    assert landmark_boxes(lm[None], (w, h), BoxRule(extra_margin=0))[0, 3] == chin
    jitter = np.stack([lm + [(-1) ** i * 2, 0] for i in range(9)])
    smooth = box_affines(jitter, (w, h), BoxRule())
    raw = box_affines(jitter, (w, h), BoxRule(smooth_window=1))
    assert np.ptp(smooth[2:-2, 0, 2]) < np.ptp(raw[:, 0, 2])


def test_blend_mask_is_the_lower_face_with_soft_edges(engine, face):
    frame, lm = face
    m = box_affines(lm[None], (frame.shape[1], frame.shape[0]), BoxRule())[0]
    crop_lm = (lm @ m[:, :2].T + m[:, 2]).astype(np.float32)
    mask = engine.blend_masks(_request(_speech(0.2, 1), 1), 0, crop_lm[None])[0]
    assert mask.shape == (256, 256) and mask.dtype == np.float32
    assert mask[:100].max() < 0.05 and mask[170:220, 100:156].min() > 0.95  # the mouth and chin, not the eyes
    edges = np.concatenate([mask[0], mask[:, 0], mask[:, -1]])
    assert edges.max() == 0.0  # the top and the sides are never the crop's square edge
    assert mask[-1, 120:136].min() > 0.4  # the bottom is the published margin below the chin (the box's edge)
    assert max(np.abs(np.diff(mask, axis=0)).max(), np.abs(np.diff(mask, axis=1)).max()) < 0.15  # feathered
    nan = engine.blend_masks(_request(_speech(0.2, 1), 1), 0, np.full((1, 68, 2), np.nan, np.float32))
    assert not nan.any()
