"""The real lip-sync pipeline (``LIPSYNC_PIPELINE=lipsync``: media + model, tiny config, random weights) behind
the real stack: redis-server, the API, an RQ worker; requests through the official Python client, the matrix
again through the official JS client, and a webhook over plain HTTP.

The media are made here: a moving face from scikit-image's astronaut (160x128, 25 fps, 20 frames), a still of
it, a clip without a face (scikit-image's coffee), and espeak-ng speech. Two denoising steps keep every request
around a second or two on a small CPU.
"""

from __future__ import annotations

import base64
import shutil
import signal
import subprocess
from fractions import Fraction
from pathlib import Path

import cv2
import fal_client
import httpx
import numpy as np
import pytest
import skimage.data

from lipsync.client import point_fal_client
from tests.conftest import ALICE
from lipsync.testing.media import probe
from lipsync.testing.stack import make_stack, wait_until
from tests.test_js_client import requires_js, run_js

W, H, FPS, N = 160, 128, 25, 20
AUTH = {"Authorization": f"Key {ALICE}"}
AAC_FRAME_S = 1024 / 22050  # the AAC encoder's last frame is whole: decoded audio may run up to one frame longer


def face_frame(i: int, n: int = N) -> np.ndarray:
    """The astronaut's face, panning and zooming slowly (RGB, H x W)."""
    t = i / max(1, n - 1)
    zoom = 0.36 + 0.04 * t
    m = np.float32([[zoom, 0, -20 + 14 * t], [0, zoom, 2 - 6 * t]])
    return cv2.warpAffine(skimage.data.astronaut(), m, (W, H), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)


def _ffmpeg_mp4(path: Path, frames: np.ndarray, fps: int) -> Path:
    """Encode with the ffmpeg CLI (not with the code under test)."""
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}", "-r", str(fps),
           "-i", "-", "-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, input=frames.tobytes(), check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    for tool in ("ffmpeg", "espeak-ng"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is required to make the test media (apt-get install {tool})")
    d = tmp_path_factory.mktemp("lipsync-media")
    frames = np.stack([face_frame(i) for i in range(N)])
    still = d / "still.png"
    cv2.imwrite(str(still), cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR))
    coffee = cv2.resize(skimage.data.coffee(), (W, H), interpolation=cv2.INTER_AREA)
    speech = d / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(speech), "-s", "180", "Hello there, lip sync."], check=True,
                   capture_output=True)
    partial = np.concatenate([frames[:12], np.stack([coffee] * 6)])  # a cut to a shot without a face
    return {
        "face": _ffmpeg_mp4(d / "face.mp4", frames, FPS),
        "partial": _ffmpeg_mp4(d / "partial.mp4", partial, FPS),
        "noface": _ffmpeg_mp4(d / "noface.mp4", np.stack([coffee] * 10), FPS),
        "still": still,
        "speech": speech,
    }


@pytest.fixture(scope="module")
def lstack(tmp_path_factory: pytest.TempPathFactory):
    # loopback webhooks allowed explicitly: the webhook test's receiver is on 127.0.0.1
    stack = make_stack(tmp_path_factory.mktemp("lipsync-stack"), pipeline="lipsync", num_inference_steps="2",
                       allow_private_urls="true")
    try:
        stack.start_api()
        stack.start_worker("lipsync-w1")
        yield stack
    finally:
        stack.stop()


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


MIMES = {".mp4": "video/mp4", ".png": "image/png", ".wav": "audio/wav"}


def submit(stack, video: Path, audio: Path, **params) -> dict:
    """Submit through the official Python client (uploads through the client's storage flow)."""
    point_fal_client(stack.base_url)
    client = fal_client.SyncClient(key=ALICE)
    args = {"video": client.upload_file(video), "audio": client.upload_file(audio), **params}
    handle = client.submit("pipio/lipsync", args)
    return {"request_id": handle.request_id, "status_url": handle.status_url, "response_url": handle.response_url,
            "cancel_url": handle.cancel_url}


def finished(stack, submitted: dict, timeout: float = 60) -> dict:
    def done():
        status = httpx.get(submitted["status_url"], params={"logs": 1}, headers=AUTH).json()
        return status if status["status"] == "COMPLETED" else None

    return wait_until(done, timeout, "the request to finish", interval=0.2)


def run_ok(stack, tmp_path: Path, video: Path, audio: Path, **params) -> tuple[dict, dict]:
    """Submit, wait, download: (completed status with logs and metrics, probe of the MP4)."""
    submitted = submit(stack, video, audio, **params)
    status = finished(stack, submitted)
    assert status.get("error") is None, (status, stack.logs())
    out = fal_client.SyncClient(key=ALICE).result("pipio/lipsync", submitted["request_id"])["video"]
    assert out["content_type"] == "video/mp4" and out["file_name"] == "output.mp4"
    return status, fetched(out["url"], tmp_path / f"{submitted['request_id']}.mp4")


def assert_audio_matches(info: dict, frames: int, fps: Fraction) -> None:
    want = frames / fps
    assert float(want) - 0.002 <= info["audio_seconds"] <= float(want) + AAC_FRAME_S + 0.002, (info, float(want))


def fetched(url: str, path: Path) -> dict:
    """A result's MP4 fetched over HTTP to ``path``, probed."""
    path.write_bytes(httpx.get(url).content)
    return probe(path)


def assert_video(info: dict, frames: int, fps: float, size: tuple[int, int]) -> None:
    """The probed MP4 has ``frames`` frames at ``fps`` and ``size``, and audio as long as those frames."""
    assert (info["frames"], info["fps"], info["size"]) == (frames, fps, size), info
    assert_audio_matches(info, frames, Fraction(fps))


def messages(status: dict, level: str | None = None) -> list[str]:
    return [e["message"] for e in status["logs"] if level is None or e["level"] == level]


# ------------------------------------------------------------------------------------------------------------


def test_video_native_settings(lstack, clips, tmp_path):
    status, info = run_ok(lstack, tmp_path, clips["face"], clips["speech"])  # num_frames 100 > the clip's 20
    assert info["frames"] == N and info["fps"] == FPS and info["size"] == (W, H)
    assert_audio_matches(info, N, Fraction(FPS))
    logs = messages(status)
    # random weights: said plainly, as a warning, in the request's own logs
    assert any("NOT A TRAINED MODEL" in m and "RANDOM weights" in m for m in messages(status, "WARN")), logs
    assert any(m.startswith("Face coverage 100.0%") for m in logs), logs
    assert any(m.startswith("Audio is") and "longer than" in m and "cut" in m for m in logs), logs
    assert any(m.startswith("denoising block 1/1 step ") and m.endswith("/2") for m in logs), logs
    assert any(m.startswith("encoding frame") for m in logs), logs
    metrics = status["metrics"]
    assert metrics["frames"] == N and metrics["source_frames"] == N and metrics["generated_frames"] == 0
    assert metrics["face_coverage"] == 1.0 and metrics["random_weights"] is True and metrics["audio_fit"] == "cut"
    for stage in ("probe_time", "face_track_time", "audio_time", "face_id_time", "crop_time", "model_time",
                  "paste_encode_time"):
        assert isinstance(metrics[stage], float) and metrics[stage] >= 0, (stage, metrics)
    assert metrics["face_id_cond_strength"] == 4  # -1 -> 4: an identity embedding, no generated frames
    assert any(m.startswith("Model: no prompt given") for m in logs), logs  # use_custom_prompt false -> None
    assert "NOT A TRAINED MODEL" in lstack.workers[0].log()  # said at load too


def test_schema_knobs_reach_the_model(lstack, clips, tmp_path):
    knobs = {"vae_chunk_size": 9, "vae_overlap_window_width": 4, "frame_block_width": 8, "feed_forward_num_splits": 3,
             "face_id_cond_strength": 0, "appearance_cond_strength": 3, "seed": 7, "use_custom_prompt": True,
             "custom_prompt": "A man in a space suit talking."}
    status, info = run_ok(lstack, tmp_path, clips["face"], clips["speech"], **knobs)
    assert info["frames"] == N
    metrics, logs = status["metrics"], messages(status)
    assert metrics["num_frame_blocks"] > 1 and metrics["face_id_cond_strength"] == 0, metrics
    assert metrics["vae_overlap_window_width"] == 0  # at most half a 9-frame chunk in whole latents: 4 -> 0, noted
    assert any("vae_overlap_window_width" in m for m in logs if m.startswith("Model:")), logs
    assert any(m.startswith(f"denoising block {metrics['num_frame_blocks']}/{metrics['num_frame_blocks']} step")
               for m in logs), logs
    assert any(m.startswith("VAE encode chunk") for m in logs) and any(m.startswith("VAE decode chunk") for m in logs)
    assert not any(m.startswith("Model: no prompt given") for m in logs), logs  # the custom prompt was used


def test_frames_without_a_face_pass_through(lstack, clips, tmp_path):
    status, info = run_ok(lstack, tmp_path, clips["partial"], clips["speech"])
    assert info["frames"] == 18
    assert status["metrics"]["face_coverage"] == pytest.approx(12 / 18, abs=1e-3)
    assert any(m.startswith("Face coverage 66.7%") for m in messages(status))
    out = _decode(next(tmp_path.glob("*.mp4")))
    source = _decode(clips["partial"])
    for j in range(12, 18):  # the coffee shot: untouched apart from a second H.264 generation
        assert _psnr(out[j], source[j]) > 35, j
    # the face shot was repainted around the mouth (random weights: visibly), and only there
    changed = [np.abs(out[j].astype(int) - source[j].astype(int)).max(axis=2) > 40 for j in range(12)]
    assert all(c.any() for c in changed)
    assert max(c.mean() for c in changed) < 0.25  # a mouth region, not the whole frame


def test_image_input_is_animated(lstack, clips, tmp_path):
    """Data URIs this time (``encode_file``), no uploads."""
    point_fal_client(lstack.base_url)
    client = fal_client.SyncClient(key=ALICE)
    handle = client.submit("pipio/lipsync", {"video": fal_client.encode_file(clips["still"]),
                                             "audio": fal_client.encode_file(clips["speech"]), "num_frames": 12})
    result = handle.get()
    path = tmp_path / "image.mp4"
    path.write_bytes(httpx.get(result["video"]["url"]).content)
    info = probe(path)
    assert info["frames"] == 12 and info["fps"] == 25 and info["size"] == (W, H)  # an image's native fps is 25
    assert_audio_matches(info, 12, Fraction(25))
    status = client.status("pipio/lipsync", handle.request_id, with_logs=True)
    assert status.error is None
    metrics = httpx.get(f"{lstack.base_url}/pipio/lipsync/requests/{handle.request_id}/status",
                        headers=AUTH).json()["metrics"]
    assert metrics["generated_frames"] == 12 and metrics["face_id_cond_strength"] == 8  # all generated -> 8
    frames = _decode(path)
    assert not all(np.array_equal(frames[0], f) for f in frames[1:])  # the still moves (the face is redrawn)


def test_half_size(lstack, clips, tmp_path):
    _, info = run_ok(lstack, tmp_path, clips["face"], clips["speech"], height=-2, width=-2, num_frames=9)
    assert info["size"] == (W // 2, H // 2) and info["frames"] == 9 and info["fps"] == FPS
    assert_audio_matches(info, 9, Fraction(FPS))


def test_frame_rate_change(lstack, clips, tmp_path):
    # 20 frames at 25 fps = 0.8 s of input, resampled to 15 fps = 12 frames
    status, info = run_ok(lstack, tmp_path, clips["face"], clips["speech"], frame_rate=15)
    assert info["fps"] == 15 and info["frames"] == 12 and info["size"] == (W, H)
    assert_audio_matches(info, 12, Fraction(15))
    assert status["metrics"]["fps"] == 15.0


def test_additions_and_removals_with_bridge_and_jump_cut(lstack, clips, tmp_path):
    edits = {
        "edit_addition_start_frames": [5], "edit_addition_durations": [3],
        "edit_removal_ranges": [10, 12, 15, 16], "edit_removal_bridge_durations": [4, 0],  # a bridge, a jump cut
    }
    status, info = run_ok(lstack, tmp_path, clips["face"], clips["speech"], **edits)
    expected = N + 3 - (3 + 2) + 4  # num_frames (capped at the clip) + additions - removed + bridges
    assert info["frames"] == expected == 22 and info["fps"] == FPS and info["size"] == (W, H)
    assert_audio_matches(info, expected, Fraction(FPS))
    metrics = status["metrics"]
    assert metrics["generated_frames"] == 7 and metrics["removed_frames"] == 5 and metrics["source_frames"] == N
    assert metrics["face_id_cond_strength"] == 8  # -1 -> 8 when frames are generated
    assert any("-> 22 output frames" in m for m in messages(status))


def test_no_face_is_a_typed_error(lstack, clips):
    submitted = submit(lstack, clips["noface"], clips["speech"])
    status = finished(lstack, submitted)
    assert status["error_type"] == "no_face_detected", status
    result = httpx.get(submitted["response_url"], headers=AUTH)
    assert result.status_code == 422
    detail = result.json()["detail"][0]
    assert detail["loc"] == ["body", "video"] and detail["type"] == "no_face_detected" and "no face" in detail["msg"]


def test_decompression_bomb_is_refused_and_the_worker_keeps_serving(lstack, clips, tmp_path):
    from tests.media.test_media_bombs import _png_declaring

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_declaring(100_000, 100_000))  # 100 bytes that declare 10^10 pixels
    status = finished(lstack, submit(lstack, bomb, clips["speech"]))
    assert status["error_type"] == "image_too_large", status
    _, info = run_ok(lstack, tmp_path, clips["face"], clips["speech"], num_frames=9)
    assert info["frames"] == 9


def test_webhook_on_completion(lstack, clips):
    from tests.test_worker_lifecycle import Receiver

    receiver = Receiver(fail_first=0)
    try:
        body = {"video": _data_uri(clips["face"], "video/mp4"), "audio": _data_uri(clips["speech"], "audio/wav"),
                "num_frames": 9}
        submitted = httpx.post(f"{lstack.base_url}/pipio/lipsync", json=body, params={"fal_webhook": receiver.url},
                               headers=AUTH).json()
        wait_until(lambda: receiver.calls, 60, "the webhook")
        call = receiver.calls[0]["body"]
        assert call["status"] == "OK" and call["request_id"] == submitted["request_id"]
        video = httpx.get(call["payload"]["video"]["url"])
        assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    finally:
        receiver.close()


JS_CASES = {
    # case: (video clip, extra input, expected frames, fps, size)
    "native": ("face", {}, N, FPS, (W, H)),
    "image": ("still", {"num_frames": 12}, 12, 25, (W, H)),
    "half-size": ("face", {"height": -2, "width": -2, "num_frames": 9}, 9, FPS, (W // 2, H // 2)),
    "frame-rate": ("face", {"frame_rate": 15}, 12, 15, (W, H)),
    "edits": ("face", {"edit_addition_start_frames": [5], "edit_addition_durations": [3],
                       "edit_removal_ranges": [10, 12, 15, 16], "edit_removal_bridge_durations": [4, 0]}, 22, FPS, (W, H)),
}


@requires_js
@pytest.mark.parametrize("case", [*JS_CASES, "no-face"])
def test_official_js_client(lstack, clips, tmp_path, case):
    """The same matrix through @fal-ai/client: Blob inputs uploaded by the client, subscribe with logs."""
    video = clips["noface"] if case == "no-face" else clips[JS_CASES[case][0]]
    extra = {} if case == "no-face" else JS_CASES[case][1]
    result = run_js(lstack, {"video": video, "audio": clips["speech"]}, "request", request=extra)
    if case == "no-face":
        assert result["error"]["status"] == 422
        assert result["error"]["body"]["detail"][0]["type"] == "no_face_detected"
        return
    _, _, frames, fps, size = JS_CASES[case]
    assert_video(fetched(result["data"]["video"]["url"], tmp_path / "js.mp4"), frames, fps, size)
    assert any("NOT A TRAINED MODEL" in m for m in result["logs"])


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _decode(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_model_loading_rules(tmp_path):
    """Weights folder -> those weights, no warning; an empty folder (a fresh Docker volume) -> random weights with
    the warning; a folder that does not exist -> an error at load (a typo must not silently give random output)."""
    import sys

    from lipsync.contract.settings import Settings
    from lipsync.worker.orchestration import load_lipsync_pipeline

    weights = tmp_path / "weights"
    subprocess.run([sys.executable, "scripts/write_random_weights.py", "--config", "tiny", "--out", str(weights)],
                   check=True, capture_output=True, cwd=Path(__file__).resolve().parents[1])
    loaded = load_lipsync_pipeline(Settings(weights_dir=weights, face_crop_size=64, device="auto", dtype="auto"))
    assert loaded.info.random_weights_warning is None and loaded.info.name == "pipio"
    assert loaded.info.weights == "weights"
    import torch

    cuda = torch.cuda.is_available()
    assert loaded.options.device == ("cuda" if cuda else "cpu")
    assert loaded.engine.model.dtype == (torch.bfloat16 if cuda else torch.float32)
    (tmp_path / "empty").mkdir()
    empty = load_lipsync_pipeline(Settings(weights_dir=tmp_path / "empty"))
    warning = empty.info.random_weights_warning
    assert warning and "not set or empty" in warning and empty.info.crop_size == 64
    from lipsync.model.weights import WeightsFolderError

    with pytest.raises(WeightsFolderError, match="does not exist"):
        load_lipsync_pipeline(Settings(weights_dir=tmp_path / "missing"))


def cancel_while_denoising(stack, clips, *, steps: int, worker: str, stage: str, timeout: float) -> None:
    """Swap the stack's workers for one with ``steps`` denoising steps, so there is time to cancel inside the
    loop; cancel with the official client once a ``stage`` progress line shows, and check that the request
    ended client_cancelled between steps, before encoding (shared by every engine's stack)."""
    for proc in list(stack.workers):
        proc.kill(signal.SIGTERM)
        stack.workers.remove(proc)
    stack.env["LIPSYNC_NUM_INFERENCE_STEPS"] = str(steps)
    stack.start_worker(worker, timeout=timeout)
    submitted = submit(stack, clips["face"], clips["speech"], num_frames=9)

    def denoising():
        status = httpx.get(submitted["status_url"], params={"logs": 1}, headers=AUTH).json()
        return any(m.startswith(stage) for m in messages(status)) and status

    status = wait_until(denoising, timeout, "denoising to start", interval=0.1)
    assert status["status"] == "IN_PROGRESS", status
    fal_client.SyncClient(key=ALICE).cancel("pipio/lipsync", submitted["request_id"])  # raises unless 2xx
    status = finished(stack, submitted, timeout=timeout)
    assert status["error_type"] == "client_cancelled", status
    logs = messages(status)
    done = [m for m in logs if m.startswith(stage)]
    assert done and not done[-1].endswith(f"{steps}/{steps}"), done  # stopped inside the loop
    assert not any(m.startswith("Encoding") for m in logs), logs


def test_cancel_while_denoising(lstack, clips):
    """Last in the module: the cancel lands between denoising steps and ends the request as client_cancelled."""
    cancel_while_denoising(lstack, clips, steps=5000, worker="lipsync-slow", stage="denoising block", timeout=60)
