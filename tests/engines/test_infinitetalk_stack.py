"""InfiniteTalk behind the real stack (redis-server, API, RQ worker with ``LIPSYNC_ENGINE=infinitetalk`` on random
weights in the published layout, two steps): a video with an addition and a removal bridge through the official
Python client, a still image brought to life, an addition at the start and a removal with a bridge through the
official JS client. Whole frames are regenerated: the output has the requested
frames, rate, size and audio; the frames of an addition move (they are generated, not the held frame)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from tests.engines.test_latentsync_stack import run_ok
from tests.test_js_client import requires_js, run_js
from tests.test_lipsync_pipeline import clips  # noqa: F401  (the module's media fixture)
from tests.test_lipsync_pipeline import FPS, H, N, W, _decode, assert_audio_matches, assert_video, fetched, messages
from lipsync.testing.stack import make_stack

TIMEOUT = 300


@pytest.fixture(scope="module")
def it_stack(tmp_path_factory: pytest.TempPathFactory, small_weights):
    stack = make_stack(tmp_path_factory.mktemp("infinitetalk-stack"), pipeline="lipsync", engine="infinitetalk",
                       weights_dir=str(small_weights["infinitetalk"]), num_inference_steps="2")
    try:
        stack.start_api()
        stack.start_worker("infinitetalk-w1", timeout=TIMEOUT)
        yield stack
    finally:
        stack.stop()


def test_video_with_an_addition_and_a_bridge(it_stack, clips, tmp_path):
    edits = {"edit_addition_start_frames": [5], "edit_addition_durations": [3],
             "edit_removal_ranges": [10, 12], "edit_removal_bridge_durations": [4]}
    status, info = run_ok(it_stack, tmp_path, clips["face"], clips["speech"], seed=5, **edits)
    frames = N + 3 - 3 + 4  # the removal range 10-12 is inclusive
    assert info["frames"] == frames and info["fps"] == FPS and info["size"] == (W, H)
    assert_audio_matches(info, frames, Fraction(FPS))
    m = status["metrics"]
    assert m["engine"] == "infinitetalk-480p" and m["generated_frames"] == 7 and m["seed"] == 5
    assert (m["chunk_frames"], m["motion_frames"], m["chunks"], m["num_inference_steps"]) == (21, 5, 2, 2)
    logs = messages(status)
    assert any("every frame is generated" in s for s in logs) and any("not used" in s for s in logs)
    out, source = _decode(next(tmp_path.glob("*.mp4"))), _decode(clips["face"])
    held = source[4]  # the timeline holds the frame before the addition for output frames 5-7
    for j in (5, 6, 7):
        assert np.abs(out[j].astype(int) - held.astype(int)).mean() > 5  # generated, not the held frame
    assert np.abs(out[5].astype(int) - out[7].astype(int)).mean() > 1  # and it moves
    # whole frames: the 4:5 frame is scaled onto the 2:3 bucket and back, every pixel regenerated
    changed = np.abs(out[0].astype(int) - source[0].astype(int)).max(axis=2) > 30
    assert changed.mean() > 0.5 and changed[:4].mean() > 0.3 and changed[-4:].mean() > 0.3


def test_frames_without_a_face_are_generated_too(it_stack, clips, tmp_path):
    status, info = run_ok(it_stack, tmp_path, clips["partial"], clips["speech"])
    assert info["frames"] == 18 and status["metrics"]["face_coverage"] < 0.7
    out, source = _decode(next(tmp_path.glob("*.mp4"))), _decode(clips["partial"])
    for j in (0, 14, 17):  # a face frame, and two of the cut to the shot without one: all regenerated
        assert np.abs(out[j].astype(int) - source[j].astype(int)).mean() > 5, j


def test_still_image_comes_to_life(it_stack, clips, tmp_path):
    status, info = run_ok(it_stack, tmp_path, clips["still"], clips["speech"], num_frames=12)
    assert info["frames"] == 12 and info["fps"] == 25 and info["size"] == (W, H)
    assert_audio_matches(info, 12, Fraction(25))
    assert status["metrics"]["chunks"] == 1 and status["metrics"]["chunk_frames"] == 13  # 12 frames: 4n+1 = 13
    out = _decode(next(tmp_path.glob("*.mp4")))
    assert np.abs(out[0].astype(int) - out[11].astype(int)).mean() > 1  # the picture moves


@requires_js
def test_addition_at_the_start_through_the_js_client(it_stack, clips, tmp_path):
    result = run_js(it_stack, {"video": clips["face"], "audio": clips["speech"]}, "request",
                    request={"edit_addition_start_frames": [0], "edit_addition_durations": [4], "num_frames": 8},
                    timeout=TIMEOUT)
    assert_video(fetched(result["data"]["video"]["url"], tmp_path / "js.mp4"), 12, FPS, (W, H))
    assert any(m.startswith("denoising frames 0-12") for m in result["logs"]), result["logs"]


@requires_js
def test_removal_with_a_bridge_through_the_js_client(it_stack, clips, tmp_path):
    """Source frames 3-5 removed, a 4-frame bridge in their place: 12 - 3 + 4 = 13 output frames, one 13-frame
    chunk; the bridge is generated motion, not either neighbour held."""
    result = run_js(it_stack, {"video": clips["face"], "audio": clips["speech"]}, "request",
                    request={"edit_removal_ranges": [3, 5], "edit_removal_bridge_durations": [4], "num_frames": 12},
                    timeout=TIMEOUT)
    path = tmp_path / "js-bridge.mp4"
    assert_video(fetched(result["data"]["video"]["url"], path), 13, FPS, (W, H))
    assert any(m.startswith("denoising frames 0-12") for m in result["logs"]), result["logs"]
    out, source = _decode(path), _decode(clips["face"])
    for j in (3, 4, 5, 6):  # the bridge: neither the frame before the removal nor the one after it
        for held in (source[2], source[6]):
            assert np.abs(out[j].astype(int) - held.astype(int)).mean() > 5, j
    assert np.abs(out[3].astype(int) - out[6].astype(int)).mean() > 1  # and it moves
