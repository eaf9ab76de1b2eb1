"""MuseTalk with the default settings against its authors' published inference (TMElyralab/MuseTalk
``scripts/inference.py``, v1.5: one frame per VAE call, ``get_image`` in "jaw" mode): on a real tracked face clip
and random weights in the published layout, the model's crops bit for bit at batch 1 on CPU in fp32 and in fp16
(the published ``--use_float16``); the pasted
frames within one level of the published blend (``cv2.resize`` of the face into its box, the blurred 8-bit mask
through PIL's paste); the blend region the published one (the chin and the margin below it in, the nose out);
a crop the model returns unchanged pastes back without a colour shift; and each paste-back deviation setting
(``LIPSYNC_PASTE_COLOUR_MATCH``, ``LIPSYNC_PASTE_ANTIALIAS``) changes what it says and nothing else.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lipsync.media.paste import paste_face
from lipsync.model.engine import CropBatch, EngineOptions, EngineRequest, Knobs
from lipsync.model.musetalk.crop_rule import affine_box
from lipsync.model.weights import load_engine
from tests.engines.test_musetalk_engine import reference_recipe

FPS, T = 25.0, 4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(small_weights) -> Path:
    return small_weights["musetalk"]


@pytest.fixture(scope="module")
def engine(root):
    return load_engine(root, EngineOptions(), None)


@pytest.fixture(scope="module")
def clip_track(tmp_path_factory):
    from lipsync.testing.media import tracked_face_clip

    return tracked_face_clip(tmp_path_factory.mktemp("clip") / "face.mp4", frames=T, size=(256, 192))


@pytest.fixture(scope="module")
def clip(clip_track, engine):
    """A real face clip, tracked: (frames, affines, crops, crop-space landmarks)."""
    from lipsync.model.engine import landmarks_to_crop

    frames, track = clip_track
    affines = engine.face_affines(track)
    return frames, affines, engine.crop(frames, affines), landmarks_to_crop(track.landmarks, affines)


def _speech(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.float32)


def _generate(engine, crops: np.ndarray, audio: np.ndarray, **knobs) -> np.ndarray:
    request = EngineRequest(audio=audio, fps=FPS, num_frames=len(crops), generate=np.zeros(len(crops), bool),
                            is_image=False, knobs=Knobs(**knobs), log=lambda s: None, progress=lambda *a: None)
    batches = [CropBatch(0, crops, np.ones(len(crops), bool), np.zeros((len(crops), 68, 2), np.float32))]
    return np.concatenate(list(engine.generate(request, batches)))


def published_blend(frame: np.ndarray, face: np.ndarray, box: tuple[int, int, int, int], mask: np.ndarray):
    """``get_image``'s paste for a blend mask given at the crop's size (the parsing replaced by it): the face
    ``cv2.resize``d into its box (bilinear), the mask likewise and made 8-bit ("L"), composited as PIL's
    ``Image.paste(im, box, mask)``: round((frame (255 - m) + face m) / 255)."""
    x1, y1, x2, y2 = box
    size = (x2 - x1, y2 - y1)
    face = cv2.resize(face, size).astype(np.int64)
    m = np.round(cv2.resize(mask, size) * 255).astype(np.int64)[..., None]
    out = frame.copy()
    blend = frame[y1:y2, x1:x2].astype(np.int64) * (255 - m) + face * m + 128
    out[y1:y2, x1:x2] = ((blend >> 8) + blend) >> 8  # PIL's DIV255
    return out


def test_batch_one_is_the_published_inference_bit_for_bit(engine, root, clip):
    _, _, crops, _ = clip
    audio = _speech(T / FPS)
    ours = _generate(engine, crops, audio, seed=7, frame_block_width=1, vae_chunk_size=1)
    published = reference_recipe(root, crops, audio, FPS, seed=7, unet_batch=1)  # frame by frame, as published
    np.testing.assert_array_equal(ours, published)


def test_the_published_batch_of_eight_is_bit_for_bit_with_the_default_knobs(engine, root, clip_track):
    """``scripts/inference.py``'s default ``--batch_size 8`` (UNet and VAE decode over 8 frames) against the engine
    asked for that batch, every other knob the hosted default (``feed_forward_num_splits`` 2 = the feed-forward
    whole, as published): bit for bit over 10 frames (a full batch and a partial one)."""
    frames, track = clip_track
    crops = engine.crop(frames, engine.face_affines(track))
    crops = np.concatenate([crops, crops[::-1], crops])[:10]
    audio = _speech(len(crops) / FPS)
    ours = _generate(engine, crops, audio, seed=7, frame_block_width=8, vae_chunk_size=8)
    published = reference_recipe(root, crops, audio, FPS, seed=7, unet_batch=8, vae_batch=8)
    np.testing.assert_array_equal(ours, published)


def test_paste_is_the_published_blend_within_one_level(engine, clip):
    frames, affines, crops, landmarks = clip
    generated = _generate(engine, crops, _speech(T / FPS), seed=7)
    masks = engine.blend_masks(None, 0, landmarks)
    for k in range(T):
        pasted = paste_face(frames[k], generated[k], affines[k], masks[k])
        want = published_blend(frames[k], generated[k], affine_box(affines[k]), masks[k])
        assert np.abs(pasted.astype(int) - want).max() <= 1
        assert np.abs(pasted.astype(int) - frames[k]).max() > 20  # the mouth was repainted


def test_blend_region_is_the_published_jaw_region(engine, clip_track):
    """On a real clip's landmarks (each frame's own box, as published): the chin and the published margin below it
    (the box's bottom, 10 px under the chin) are pasted, the nose is kept from the source, the eyes and the
    cheeks' outer parts are not touched."""
    from lipsync.model.engine import landmarks_to_crop
    from lipsync.model.musetalk.crop_rule import BoxRule, box_affines

    track = clip_track[1]
    affines = box_affines(track.landmarks, track.frame_size, BoxRule(smooth_window=1))
    landmarks = landmarks_to_crop(track.landmarks, affines)
    masks = engine.blend_masks(None, 0, landmarks)
    for mask, lm in zip(masks, landmarks):
        def at(p):
            return float(mask[int(round(p[1])), int(round(p[0]))])

        chin = lm[8]
        assert at(chin) >= 0.95
        below = mask[int(np.ceil(chin[1])) + 1 :, int(round(chin[0]))]
        assert below.size and below[: max(1, below.size // 2)].min() >= 0.8 and below[-1] >= 0.4  # the margin
        assert at(lm[30]) <= 0.1 and at((lm[31] + lm[35]) / 2) <= 0.5  # the nose tip and the nostrils: kept
        assert at((lm[62] + lm[66]) / 2) >= 0.99 and at(lm[57]) >= 0.99  # the mouth and the lower lip
        assert mask[: int(lm[29][1]) - 10].max() == 0.0  # above the box's middle row: never
        assert at(lm[2]) <= 0.05 and at(lm[14]) <= 0.05  # the cheeks' outer parts: eroded away, as published


def test_an_unchanged_crop_pastes_back_without_a_colour_shift(engine, clip):
    """An engine stand-in that returns its input crop: the published blend of it within one level, the mean
    over the pasted pixels within one level of the source's (no colour transfer), the rest untouched. On
    flat-colour frames (the same boxes and masks), where the resize round trip loses nothing, the pasted frame is
    the source within one level at every pixel."""
    frames, affines, crops, landmarks = clip
    masks = engine.blend_masks(None, 0, landmarks)
    for colour in ((0, 0, 0), (255, 255, 255), (201, 122, 57), (16, 128, 235)):
        flat = np.broadcast_to(np.array(colour, np.uint8), frames.shape).copy()
        flat_crops = engine.crop(flat, affines)
        for k in range(T):
            assert (flat_crops[k] == np.array(colour, np.uint8)).all()  # nothing lost on the way in
            pasted = paste_face(flat[k], flat_crops[k], affines[k], masks[k])
            assert np.abs(pasted.astype(int) - flat[k]).max() <= 1, (colour, k)
    for k in range(T):
        pasted = paste_face(frames[k], crops[k], affines[k], masks[k])
        assert np.abs(pasted.astype(int) - published_blend(frames[k], crops[k], affine_box(affines[k]),
                                                             masks[k])).max() <= 1
        x1, y1, x2, y2 = affine_box(affines[k])
        alpha = cv2.resize(masks[k], (x2 - x1, y2 - y1))
        area = alpha > 0.5
        box = pasted[y1:y2, x1:x2][area].astype(float) - frames[k][y1:y2, x1:x2][area]
        assert np.abs(box.mean(0)).max() <= 1.0, box.mean(0)
        outside = np.ones(frames[k].shape[:2], bool)
        outside[y1:y2, x1:x2] = alpha == 0
        assert np.array_equal(pasted[outside], frames[k][outside])


def test_colour_match_setting_shifts_the_pasted_pixels_only(engine, clip):
    """LIPSYNC_PASTE_COLOUR_MATCH: a face 12 levels too bright shows as +12 inside the mask without it; with it
    the seam's mean matches the frame's; pixels the mask does not reach are the frame's in both."""
    frames, affines, crops, landmarks = clip
    masks = engine.blend_masks(None, 0, landmarks)
    k = 0
    brighter = np.clip(crops[k].astype(int) + 12, 0, 255).astype(np.uint8)
    plain = paste_face(frames[k], brighter, affines[k], masks[k])
    matched = paste_face(frames[k], brighter, affines[k], masks[k], colour_match=True)
    x1, y1, x2, y2 = affine_box(affines[k])
    alpha = cv2.resize(masks[k], (x2 - x1, y2 - y1))
    untouched = np.ones(frames[k].shape[:2], bool)
    untouched[y1:y2, x1:x2] = alpha == 0
    for out in (plain, matched):
        assert np.array_equal(out[untouched], frames[k][untouched])
    full = np.zeros_like(untouched)
    full[y1:y2, x1:x2] = alpha > 0.99
    shift_plain = (plain[full].astype(float) - frames[k][full]).mean()
    shift_matched = (matched[full].astype(float) - frames[k][full]).mean()
    assert 8 < shift_plain < 14 and abs(shift_matched) < 4, (shift_plain, shift_matched)


def test_antialias_setting_blurs_a_shrunk_face_only(engine, clip):
    """LIPSYNC_PASTE_ANTIALIAS: a crop shrunk into the frame is blurred first: it changes pasted pixels (fine
    detail), never a pixel the mask does not reach."""
    frames, affines, crops, landmarks = clip
    masks = engine.blend_masks(None, 0, landmarks)
    rng = np.random.default_rng(0)
    detailed = rng.integers(0, 255, crops[0].shape, dtype=np.uint8)  # detail finer than a frame pixel
    plain = paste_face(frames[0], detailed, affines[0], masks[0])
    smooth = paste_face(frames[0], detailed, affines[0], masks[0], antialias=True)
    x1, y1, x2, y2 = affine_box(affines[0])
    alpha = np.zeros(frames[0].shape[:2], np.float32)
    alpha[y1:y2, x1:x2] = cv2.resize(masks[0], (x2 - x1, y2 - y1))
    diff = np.abs(plain.astype(int) - smooth).max(-1)
    assert diff[alpha == 0].max() == 0 and diff[alpha > 0.5].mean() > 5


def test_fp16_is_the_published_fp16_inference(root, clip):
    """fp16 (what a GPU runs by default) on the CPU: the engine at batch 1 against the published
    ``--use_float16`` inference, bit for bit."""
    crops = clip[2][:2]  # fp16 is slow on a CPU
    audio = _speech(len(crops) / FPS)
    engine = load_engine(root, EngineOptions(dtype="fp16"), None)
    ours = _generate(engine, crops, audio, seed=7, frame_block_width=1, vae_chunk_size=1)
    published = reference_recipe(root, crops, audio, FPS, seed=7, unet_batch=1, dtype=torch.float16)
    np.testing.assert_array_equal(ours, published)
