"""LatentSync behind the real stack (redis-server, API, RQ worker with ``LIPSYNC_ENGINE=latentsync`` on random
weights in the published layout): video and image input through the official Python client, an edit through
the official JS client, a cancel while denoising. The media and helpers are test_lipsync_pipeline's."""

from __future__ import annotations

from fractions import Fraction

import fal_client
import numpy as np
import pytest

from tests.conftest import ALICE
from lipsync.testing.stack import make_stack
from tests.test_js_client import requires_js, run_js
from tests.test_lipsync_pipeline import clips  # noqa: F401  (the module's media fixture)
from tests.test_lipsync_pipeline import (FPS, H, N, W, _decode, assert_audio_matches, assert_video,
                                         cancel_while_denoising, fetched, finished, messages, submit)

TIMEOUT = 300
"""A diffusion UNet on a shared CPU: minutes, not seconds."""


def run_ok(stack, tmp_path, video, audio, **params):
    """test_lipsync_pipeline's run_ok with a longer wait: (completed status, probe of the MP4)."""
    submitted = submit(stack, video, audio, **params)
    status = finished(stack, submitted, timeout=TIMEOUT)
    assert status.get("error") is None, (status, stack.logs())
    out = fal_client.SyncClient(key=ALICE).result("pipio/lipsync", submitted["request_id"])["video"]
    return status, fetched(out["url"], tmp_path / f"{submitted['request_id']}.mp4")


@pytest.fixture(scope="module")
def ls_stack(tmp_path_factory: pytest.TempPathFactory):
    from lipsync.model.latentsync.random_weights import write_random_weights

    weights = write_random_weights(tmp_path_factory.mktemp("weights") / "latentsync", seed=0)
    stack = make_stack(tmp_path_factory.mktemp("latentsync-stack"), pipeline="lipsync", engine="latentsync",
                       weights_dir=str(weights), num_inference_steps="2")
    try:
        stack.start_api()
        stack.start_worker("latentsync-w1", timeout=TIMEOUT)  # engine + face models on a shared CPU
        yield stack
    finally:
        stack.stop()


def test_video_through_the_python_client(ls_stack, clips, tmp_path):
    status, info = run_ok(ls_stack, tmp_path, clips["face"], clips["speech"], seed=3)
    assert info["frames"] == N and info["fps"] == FPS and info["size"] == (W, H)
    assert_audio_matches(info, N, Fraction(FPS))
    m = status["metrics"]
    assert m["engine"] == "latentsync-1.6" and m["model"] == "latentsync" and m["crop_size"] == 64
    assert (m["segments"], m["segment_frames"], m["num_inference_steps"], m["seed"]) == (2, 16, 2, 3)
    logs = messages(status)
    assert any(s.startswith("denoising frames 0-15") and s.endswith("2/2") for s in logs), logs
    assert any("fixed by training" in s for s in logs) and any("not used" in s for s in logs)
    out, source = _decode(next(tmp_path.glob("*.mp4"))), _decode(clips["face"])
    changed = [np.abs(out[j].astype(int) - source[j].astype(int)).max(axis=2) > 40 for j in range(N)]
    assert all(c.any() for c in changed) and max(c.mean() for c in changed) < 0.3  # the lower face only


def test_image_input_through_the_python_client(ls_stack, clips, tmp_path):
    status, info = run_ok(ls_stack, tmp_path, clips["still"], clips["speech"], num_frames=12)
    assert info["frames"] == 12 and info["fps"] == 25 and info["size"] == (W, H)
    assert_audio_matches(info, 12, Fraction(25))
    assert status["metrics"]["segments"] == 1


@requires_js
def test_edit_through_the_js_client(ls_stack, clips, tmp_path):
    edits = {"edit_addition_start_frames": [5], "edit_addition_durations": [3],
             "edit_removal_ranges": [10, 12, 15, 16], "edit_removal_bridge_durations": [4, 0]}
    result = run_js(ls_stack, {"video": clips["face"], "audio": clips["speech"]}, "request", request=edits,
                    timeout=300)
    assert_video(fetched(result["data"]["video"]["url"], tmp_path / "js.mp4"), 22, FPS, (W, H))
    assert any(m.startswith("denoising frames 16-21") for m in result["logs"]), result["logs"]


def test_cancel_while_denoising(ls_stack, clips):
    """Last: the worker is swapped for one with many steps; the cancel lands between denoising steps."""
    cancel_while_denoising(ls_stack, clips, steps=500, worker="latentsync-slow", stage="denoising frames",
                           timeout=TIMEOUT)
