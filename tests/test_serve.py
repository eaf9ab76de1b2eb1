"""``lipsync serve``: one command starts Redis, a worker and the API; stopping it stops them all.

This is README's quick start: ``lipsync serve`` with nothing configured (the lip-sync pipeline, random tiny
weights), then README's Python example on a face clip and speech; the MP4 must match the request.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import fal_client
import httpx
import psutil

from lipsync.client import point_fal_client
from lipsync.testing.media import make_face_video, make_speech, probe
from lipsync.testing.stack import free_port, wait_until
from tests.support import ROOT


def test_serve_runs_a_request_end_to_end_and_stops_its_children(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIPSYNC_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lipsync", "serve", "--port", str(port), "--data-dir", str(tmp_path / "data")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(base, proc), 120, "lipsync serve")
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any("redis-server" in c.name() for c in children)
        point_fal_client(base)
        client = fal_client.SyncClient(key="local")
        video = make_face_video(tmp_path / "face.mp4", frames=20, size=(160, 128))
        speech = make_speech(tmp_path / "speech.wav")
        logs = []
        result = client.subscribe(
            "pipio/lipsync",
            arguments={"video": client.upload_file(video), "audio": client.upload_file(speech), "frame_rate": 20},
            with_logs=True,
            on_queue_update=lambda update: logs.extend(getattr(update, "logs", None) or []),
        )
        out = tmp_path / "out.mp4"
        out.write_bytes(httpx.get(result["video"]["url"]).content)
        info = probe(out)
        # 20 frames at 25 fps = 0.8 s; at 20 fps that is 16 frames, and 0.8 s of audio (+ at most one AAC frame)
        assert info["frames"] == 16 and info["fps"] == 20 and info["size"] == (160, 128)
        assert 0.8 - 0.002 <= info["audio_seconds"] <= 0.8 + 1024 / 22050 + 0.002
        assert any("NOT A TRAINED MODEL" in entry["message"] for entry in logs)
        assert (tmp_path / "data" / "redis" / "appendonlydir").is_dir()  # AOF on
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=60)[0]
    assert "lipsync is starting on " + base in output and "point_fal_client" in output
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def _ready(base: str, proc: subprocess.Popen) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(proc.stdout.read())
    try:
        return httpx.get(f"{base}/readyz", timeout=1).json().get("workers") == 1
    except httpx.HTTPError:
        return False
