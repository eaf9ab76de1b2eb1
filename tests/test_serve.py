"""``lipsync serve``: one command starts Redis, a worker and the API; stopping it stops them all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import fal_client
import httpx
import psutil

from lipsync.fal_compat import point_fal_client
from tests.support import ROOT, free_port, probe, wait_until


def test_serve_runs_a_request_end_to_end_and_stops_its_children(tmp_path, media):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIPSYNC_")}
    env["LIPSYNC_PIPELINE"] = "tests.pipelines:reencode"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lipsync", "serve", "--port", str(port), "--data-dir", str(tmp_path / "data")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(base, proc), 60, "lipsync serve")
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any("redis-server" in c.name() for c in children)
        point_fal_client(base)
        client = fal_client.SyncClient(key="local")
        result = client.subscribe("pipio/lipsync", arguments={
            "video": client.upload_file(media["video"]), "audio": fal_client.encode_file(media["audio"])})
        out = tmp_path / "out.mp4"
        out.write_bytes(httpx.get(result["video"]["url"]).content)
        assert probe(out)["frames"] == 12
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
