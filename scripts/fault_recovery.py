"""Measure recovery from faults with the default settings: a SIGKILLed worker, a Redis crash (AOF on).

    .venv/bin/python scripts/fault_recovery.py

1. A worker is SIGKILLed mid-job: prints the seconds until its request is COMPLETED with
   ``runner_disconnected`` (bounded by heartbeat_ttl_s + reaper_interval_s: 13 s by default).
2. redis-server is SIGKILLed with requests queued (AOF, fsync every second) and restarted: prints how many
   survived and the seconds until the API answers again and until all of them completed.
"""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support import API_KEYS, data_uri_body, make_stack, make_video, make_wav, wait_until  # noqa: E402

AUTH = {"Authorization": f"Key alice:{API_KEYS['alice']}"}
DEFAULTS = {"heartbeat_interval_s": "2", "heartbeat_ttl_s": "10", "reaper_interval_s": "3"}


def body(tmp: Path, **extra) -> dict:
    video, audio = make_video(tmp / "v.mp4", frames=30), make_wav(tmp / "a.wav", seconds=1.2)
    return data_uri_body(video, audio, **extra)


def status(sub: dict) -> dict:
    return httpx.get(sub["status_url"], headers=AUTH, timeout=5).json()


def killed_worker(tmp: Path) -> None:
    stack = make_stack(tmp / "kill", **DEFAULTS)
    try:
        stack.start_api("--log-level", "WARNING")
        worker = stack.start_worker("victim")
        sub = httpx.post(f"{stack.base_url}/pipio/lipsync", headers=AUTH,
                         json=body(tmp, use_custom_prompt=True, custom_prompt="test:slow=1", num_frames=30)).json()
        wait_until(lambda: status(sub)["status"] == "IN_PROGRESS", 30, "start")
        time.sleep(2.5)
        worker.kill(signal.SIGKILL)
        t0 = time.monotonic()
        final = wait_until(lambda: (s := status(sub))["status"] == "COMPLETED" and s, 60, "reaping", 0.05)
        print(f"worker SIGKILL → request COMPLETED ({final['error_type']}): {time.monotonic() - t0:.1f} s")
    finally:
        stack.stop()


def redis_crash(tmp: Path, n: int = 20) -> None:
    stack = make_stack(tmp / "aof", appendonly=True, **DEFAULTS)
    try:
        stack.start_api("--log-level", "WARNING")
        subs = [httpx.post(f"{stack.base_url}/pipio/lipsync", headers=AUTH, json=body(tmp, num_frames=2)).json()
                for _ in range(n)]
        time.sleep(1.5)
        t0 = time.monotonic()
        stack.restart_redis(signal.SIGKILL)
        wait_until(lambda: httpx.get(f"{stack.base_url}/readyz").status_code == 200, 30, "readiness", 0.02)
        ready = time.monotonic() - t0
        survived = sum(status(s)["status"] == "IN_QUEUE" for s in subs)
        stack.start_worker("after-crash")
        for s in subs:
            wait_until(lambda s=s: status(s)["status"] == "COMPLETED", 60, "completion", 0.05)
        print(f"redis SIGKILL with {n} queued (AOF): {survived}/{n} survived; API ready again after {ready:.1f} s; "
              f"all completed {time.monotonic() - t0:.1f} s after the crash (worker start included)")
    finally:
        stack.stop()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        killed_worker(Path(tmp))
        redis_crash(Path(tmp))
