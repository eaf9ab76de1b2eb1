"""The video-side cache through the real stack (redis-server, the API, an RQ worker with ``LIPSYNC_CACHE_BYTES``
set, the official Python client): one uploaded video, two voices. The second request reuses the probe, the face
track, the crops and the image encoder's outputs, and its metrics say so and the time saved; a request with
``skip_video_cache`` neither reads nor fills the cache. The uploaded video itself is kept by its digest (computed
once, when the API stored it): a repeated upload URL, or the same bytes uploaded again, is neither downloaded nor
hashed by the worker."""

from __future__ import annotations

from pathlib import Path

import fal_client
import pytest

from lipsync.client import point_fal_client
from lipsync.testing.media import make_speech
from tests.conftest import ALICE, _stack
from tests.test_lipsync_pipeline import clips, finished, messages

__all__ = ["clips"]


@pytest.fixture(scope="module")
def cstack(tmp_path_factory):
    yield from _stack(tmp_path_factory, "cache-stack", pipeline="lipsync", device="cpu", num_inference_steps="2",
                      cache_dir=str(tmp_path_factory.mktemp("cache")), cache_bytes=str(1 << 30))


def run(stack, video_url: str, audio_url: str, **params) -> dict:
    client = fal_client.SyncClient(key=ALICE)
    handle = client.submit("pipio/lipsync", {"video": video_url, "audio": audio_url, "num_frames": 12, **params})
    status = finished(stack, {"status_url": handle.status_url}, timeout=240)
    assert status.get("error") is None, (status, stack.logs())
    return status


def test_one_video_two_voices_through_the_stack(cstack, clips, tmp_path):
    point_fal_client(cstack.base_url)
    client = fal_client.SyncClient(key=ALICE)
    video = client.upload_file(clips["face"])
    speech = client.upload_file(clips["speech"])
    other = client.upload_file(make_speech(tmp_path / "other.wav", "Another voice."))
    cache = Path(cstack.env["LIPSYNC_CACHE_DIR"])

    first = run(cstack, video, speech)["metrics"]
    assert first["input_cache"] == "filled"  # the upload's bytes kept: hashed once, when it was stored
    assert first["cache_reused"] == [] and set(first["cache_filled"]) == {"source", "crops", "image_encoder"}
    assert first["encoder_calls"] > 0 and first["face_track_time"] > 0
    assert len(list(cache.glob("*.lsc"))) == 4  # input, source, crops, encoder

    second = run(cstack, video, other)
    metrics = second["metrics"]
    assert metrics["input_cache"] == "hit"  # the same upload URL: no download, no hashing
    assert {"probe", "face_track", "face_id", "crops", "image_encoder"} <= set(metrics["cache_reused"])
    assert metrics["cache_filled"] == [] and metrics["encoder_calls"] == 0 and metrics["encoder_reused"] > 0
    assert "face_track_time" not in metrics and metrics["cache_saved_time"] > 0
    assert any("from the video cache" in m for m in messages(second))

    again = run(cstack, client.upload_file(clips["face"]), speech)["metrics"]  # the same bytes uploaded again
    assert again["input_cache"] == "hit" and "face_track" in again["cache_reused"]

    skipped = run(cstack, video, other, skip_video_cache=True)
    assert "cache_reused" not in skipped["metrics"] and "input_cache" not in skipped["metrics"]
    assert skipped["metrics"]["face_track_time"] > 0
    assert any("skipped for this request" in m for m in messages(skipped))
    assert len(list(cache.glob("*.lsc"))) == 4
