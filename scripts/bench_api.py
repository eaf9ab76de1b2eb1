"""Benchmark the API: submit and status latency under N concurrent clients, and submit→worker-start overhead.

Starts its own redis-server + API (+ one worker for the overhead phase) on 127.0.0.1, like the tests:

    .venv/bin/python scripts/bench_api.py --clients 16 --seconds 10

Phase 1 (load): each client loops submit → 3 status polls for --seconds; no worker runs, so the numbers are
the API's and Redis's alone. Phase 2 (overhead): one idle worker; --overhead-requests tiny requests one
after another; the time from submit to the worker starting each is read from the request's own metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lipsync.testing.media import data_uri_body, make_video, make_wav  # noqa: E402
from lipsync.testing.stack import API_KEYS, make_stack, percentile_ms, wait_until

AUTH = {"Authorization": f"Key alice:{API_KEYS['alice']}"}
BODY = {"video": "https://example.com/face.mp4", "audio": "https://example.com/speech.wav"}


async def client_loop(base: str, until: float, submit_ms: list[float], status_ms: list[float], errors: list[str]):
    async with httpx.AsyncClient(headers=AUTH, timeout=30) as http:
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            r = await http.post(f"{base}/pipio/lipsync", json=BODY)
            submit_ms.append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors.append(f"submit {r.status_code}")
                continue
            url = r.json()["status_url"]
            for _ in range(3):
                t0 = time.perf_counter()
                s = await http.get(url, params={"logs": 1})
                status_ms.append(time.perf_counter() - t0)
                if s.status_code not in (200, 202):
                    errors.append(f"status {s.status_code}")


async def load(base: str, clients: int, seconds: float) -> None:
    submit_ms: list[float] = []
    status_ms: list[float] = []
    errors: list[str] = []
    until = time.perf_counter() + seconds
    started = time.perf_counter()
    await asyncio.gather(*(client_loop(base, until, submit_ms, status_ms, errors) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    total = len(submit_ms) + len(status_ms)
    print(f"load: {clients} clients for {elapsed:.1f} s: {total} requests, {total / elapsed:.0f} requests/s, "
          f"{len(errors)} errors")
    print(f"  submit  p50 {percentile_ms(submit_ms, 0.5):6.1f} ms  p99 {percentile_ms(submit_ms, 0.99):6.1f} ms  ({len(submit_ms)})")
    print(f"  status  p50 {percentile_ms(status_ms, 0.5):6.1f} ms  p99 {percentile_ms(status_ms, 0.99):6.1f} ms  ({len(status_ms)})")


def overhead(stack, n: int, workdir: Path) -> None:
    video = make_video(workdir / "v.mp4", frames=2)
    audio = make_wav(workdir / "a.wav", seconds=0.2)
    body = data_uri_body(video, audio, num_frames=2)
    waits, totals = [], []
    with httpx.Client(headers=AUTH, timeout=30) as http:
        for _ in range(n):
            t0 = time.perf_counter()
            sub = http.post(f"{stack.base_url}/pipio/lipsync", json=body).json()
            status = wait_until(
                lambda: (s := http.get(sub["status_url"]).json())["status"] == "COMPLETED" and s, 60, "done", 0.005
            )
            totals.append(time.perf_counter() - t0)
            waits.append(status["metrics"]["queue_time"])
    print(f"overhead: {n} sequential requests, one idle worker")
    print(f"  submit→worker start  p50 {percentile_ms(waits, 0.5):6.1f} ms  p99 {percentile_ms(waits, 0.99):6.1f} ms")
    print(f"  submit→COMPLETED seen (2-frame test pipeline)  p50 {percentile_ms(totals, 0.5):6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--overhead-requests", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stack = make_stack(Path(tmp))
        try:
            stack.start_api("--log-level", "WARNING")
            asyncio.run(load(stack.base_url, args.clients, args.seconds))
            stack.redis.flushdb()
            stack.start_worker("bench-w1")
            overhead(stack, args.overhead_requests, Path(tmp))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
