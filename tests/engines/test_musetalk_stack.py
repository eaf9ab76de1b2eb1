"""MuseTalk 1.5 behind the real stack (redis-server, the API, an RQ worker with ``LIPSYNC_WEIGHTS_DIR`` on a
folder of random weights in the published layout), through both official clients: video, image, ``-2`` size,
frame-rate change, an edit. Media, clients and matrix are the lip-sync pipeline tests' own
(tests/test_lipsync_pipeline.py)."""

from __future__ import annotations

from fractions import Fraction

import cv2
import fal_client
import numpy as np
import pytest

from tests.conftest import ALICE
from lipsync.testing.stack import make_stack
from tests.test_js_client import run_js
from tests.test_lipsync_pipeline import (FPS, JS_CASES, H, N, W, _decode, _psnr, assert_audio_matches,
                                         assert_video, clips, fetched, finished, messages, requires_js, submit)

__all__ = ["clips"]  # the media fixture, shared with the lip-sync pipeline tests


@pytest.fixture(scope="module")
def mstack(tmp_path_factory, musetalk_dir):
    stack = make_stack(tmp_path_factory.mktemp("musetalk-stack"), pipeline="lipsync", weights_dir=str(musetalk_dir),
                       device="cpu")
    try:
        stack.start_api()
        stack.start_worker("musetalk-w1")
        yield stack
    finally:
        stack.stop()


def run_ok(stack, tmp_path, video, audio, **params):
    submitted = submit(stack, video, audio, **params)
    status = finished(stack, submitted, timeout=240)
    assert status.get("error") is None, (status, stack.logs())
    out = fal_client.SyncClient(key=ALICE).result("pipio/lipsync", submitted["request_id"])["video"]
    path = tmp_path / f"{submitted['request_id']}.mp4"
    return status, fetched(out["url"], path), path


def _frame_masks(frames: list[np.ndarray]) -> np.ndarray:
    """(T, H, W) the engine's blend masks in frame pixels, from a face track of ``frames`` (the engine's rule)."""
    from lipsync.media.faces import track_faces
    from lipsync.model.engine import landmarks_to_crop
    from lipsync.model.musetalk.crop_rule import BoxRule, box_affines, lower_face_masks

    track = track_faces(np.stack(frames))
    affines = box_affines(track.landmarks, track.frame_size, BoxRule())
    masks = lower_face_masks(landmarks_to_crop(track.landmarks, np.nan_to_num(affines)), 256)
    h, w = frames[0].shape[:2]
    return np.stack([cv2.warpAffine(m, a, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
                     for m, a in zip(masks, affines)])


def test_video_is_lip_synced_inside_the_mask_only(mstack, clips, tmp_path):
    status, info, path = run_ok(mstack, tmp_path, clips["face"], clips["speech"])
    assert_video(info, N, FPS, (W, H))
    metrics, logs = status["metrics"], messages(status)
    assert metrics["engine"] == "musetalk-1.5" and metrics["model"] == "musetalk"
    assert metrics["random_weights"] is False and metrics["crop_size"] == 256
    assert (metrics["unet_batch"], metrics["vae_batch"], metrics["seed"]) == (136, 65, 42)
    assert metrics["posterior"] == "sample" and metrics["feed_forward_splits"] == 1  # the hosted 2: whole, as published
    assert not messages(status, "WARN") or not any("NOT A TRAINED MODEL" in m for m in messages(status, "WARN"))
    assert any(m.startswith("MuseTalk: UNet batch 136 frames") for m in logs), logs
    assert sum(m.startswith("MuseTalk has no mechanism for") for m in logs) == 1, logs
    assert any(m.startswith("MuseTalk: frame") for m in logs), logs
    out, source = _decode(path), _decode(clips["face"])
    masks = _frame_masks(source)
    for j in range(N):
        inside = masks[j] > 0.5
        # outside the blend mask (grown by 8 px for H.264 blocks and the mask's faint tail): the source, up to a
        # second H.264 generation whose bits go to the noisy mouth; inside: repainted (random weights: visibly)
        outside = cv2.dilate((masks[j] > 0).astype(np.uint8), np.ones((17, 17), np.uint8)) == 0
        assert _psnr(out[j][outside], source[j][outside]) > 30, j
        assert np.abs(out[j][inside].astype(int) - source[j][inside].astype(int)).mean() > 10, j


def test_knobs_reach_the_engine(mstack, clips, tmp_path):
    knobs = {"frame_block_width": 8, "vae_chunk_size": 9, "vae_overlap_window_width": 4, "feed_forward_num_splits": 4, "seed": 7,
             "face_id_cond_strength": 3, "use_custom_prompt": True, "custom_prompt": "a man talking"}
    status, info, _ = run_ok(mstack, tmp_path, clips["face"], clips["speech"], num_frames=9, **knobs)
    metrics, logs = status["metrics"], messages(status)
    assert info["frames"] == 9
    assert (metrics["unet_batch"], metrics["vae_batch"], metrics["feed_forward_splits"], metrics["seed"]) == (8, 9, 4, 7)
    unused = [m for m in logs if m.startswith("MuseTalk has no mechanism for")]
    assert len(unused) == 1 and "face_id_cond_strength=3" in unused[0] and "custom_prompt (given)" in unused[0]
    assert "vae_overlap_window_width=4" in unused[0]


def test_image_moves_the_mouth_only(mstack, clips, tmp_path):
    status, info, path = run_ok(mstack, tmp_path, clips["still"], clips["speech"], num_frames=12)
    assert_video(info, 12, 25, (W, H))
    frames = _decode(path)
    mask = _frame_masks([cv2.cvtColor(cv2.imread(str(clips["still"])), cv2.COLOR_BGR2RGB)])[0]
    outside = cv2.dilate((mask > 0).astype(np.uint8), np.ones((17, 17), np.uint8)) == 0
    moved = np.abs(frames[0].astype(int) - frames[5].astype(int)).max(-1) > 20
    assert moved.any() and not (moved & outside).any()  # only the mouth moves
    assert status["metrics"]["generated_frames"] == 0 and status["metrics"]["engine"] == "musetalk-1.5"


def test_half_size_frame_rate_and_edits(mstack, clips, tmp_path):
    _, info, _ = run_ok(mstack, tmp_path, clips["face"], clips["speech"], height=-2, width=-2, num_frames=9)
    assert (info["size"], info["frames"], info["fps"]) == ((W // 2, H // 2), 9, FPS)
    assert_audio_matches(info, 9, Fraction(FPS))
    _, info, _ = run_ok(mstack, tmp_path, clips["face"], clips["speech"], frame_rate=15)
    assert (info["fps"], info["frames"], info["size"]) == (15, 12, (W, H))
    assert_audio_matches(info, 12, Fraction(15))
    status, info, _ = run_ok(mstack, tmp_path, clips["face"], clips["speech"], **JS_CASES["edits"][1])
    assert (info["frames"], info["fps"]) == (22, FPS)  # additions and a bridge: held frames, lip-synced
    assert_audio_matches(info, 22, Fraction(FPS))
    assert status["metrics"]["generated_frames"] == 7


@requires_js
@pytest.mark.parametrize("case", list(JS_CASES))
def test_official_js_client(mstack, clips, tmp_path, case):
    clip, extra, frames, fps, size = JS_CASES[case]
    result = run_js(mstack, {"video": clips[clip], "audio": clips["speech"]}, "request", request=extra, timeout=300)
    assert_video(fetched(result["data"]["video"]["url"], tmp_path / "js.mp4"), frames, fps, size)
    assert any(m.startswith("MuseTalk: UNet batch") for m in result["logs"])
    assert not any("NOT A TRAINED MODEL" in m for m in result["logs"])
