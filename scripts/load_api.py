"""Load test: N concurrent clients submit, poll and stream for T seconds; nothing may be lost or duplicated.

Starts redis-server + the API + W workers (the tests' small re-encode pipeline) on 127.0.0.1:

    .venv/bin/python scripts/load_api.py --clients 16 --seconds 20 --workers 2

Each client loops: submit a tiny request, follow it to COMPLETED (half the clients poll the status URL, half
read the SSE stream), fetch the result. Afterwards every submitted id is checked in Redis: it must have
reached COMPLETED exactly once (one COMPLETED event in its stream) and have run exactly once (one
"Fetching inputs" line). Prints requests/s, p50/p99 per operation, errors, lost and duplicated requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from contract.jobs import JobStore, RequestStatus  # noqa: E402
from tests.support import API_KEYS, data_uri_body, make_stack, make_video, make_wav, percentile_ms  # noqa: E402

AUTH = {"Authorization": f"Key alice:{API_KEYS['alice']}"}


class Load:
    def __init__(self, base: str, body: dict):
        self.base, self.body = base, body
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []
        self.submitted: list[str] = []

    async def timed(self, op: str, call):
        t0 = time.perf_counter()
        response = await call
        self.latency[op].append(time.perf_counter() - t0)
        return response

    async def follow_polling(self, http: httpx.AsyncClient, status_url: str) -> None:
        while True:
            r = await self.timed("status", http.get(status_url, params={"logs": 1}))
            if r.json()["status"] == "COMPLETED":
                return
            await asyncio.sleep(0.1)

    async def follow_stream(self, http: httpx.AsyncClient, status_url: str) -> None:
        t0 = time.perf_counter()
        async with http.stream("GET", status_url + "/stream", params={"logs": 1}) as r:
            last = None
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    last = json.loads(line[6:])
        self.latency["stream (whole)"].append(time.perf_counter() - t0)
        if not last or last["status"] != "COMPLETED":
            self.errors.append("stream ended before COMPLETED")

    async def client(self, n: int, until: float) -> None:
        async with httpx.AsyncClient(headers=AUTH, timeout=120) as http:
            while time.perf_counter() < until:
                try:
                    r = await self.timed("submit", http.post(f"{self.base}/pipio/lipsync", json=self.body))
                    if r.status_code != 200:
                        self.errors.append(f"submit HTTP {r.status_code}")
                        continue
                    sub = r.json()
                    self.submitted.append(sub["request_id"])
                    follow = self.follow_stream if n % 2 else self.follow_polling
                    await follow(http, sub["status_url"])
                    result = await self.timed("result", http.get(sub["response_url"]))
                    if result.status_code != 200:
                        self.errors.append(f"result HTTP {result.status_code}: {result.text[:120]}")
                except httpx.HTTPError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")


def audit(store: JobStore, ids: list[str]) -> tuple[int, int, int]:
    """(lost, completed more than once, ran more than once) over the submitted ids."""
    lost = twice = ran_twice = 0
    for rid in ids:
        record = store.get(rid)
        if record is None or record.status is not RequestStatus.COMPLETED:
            lost += 1
            continue
        events = store.events(rid)
        twice += sum(1 for e in events if e.kind == "status" and e.data.get("status") == "COMPLETED") != 1
        ran_twice += sum(1 for e in events if e.kind == "log" and e.data.get("message") == "Fetching inputs") != 1
    return lost, twice, ran_twice


async def run(args: argparse.Namespace, stack, body: dict) -> None:
    load = Load(stack.base_url, body)
    started = time.perf_counter()
    until = started + args.seconds
    await asyncio.gather(*(load.client(n, until) for n in range(args.clients)))
    elapsed = time.perf_counter() - started
    ops = sum(len(v) for k, v in load.latency.items() if k != "stream (whole)")
    print(f"{args.clients} clients, {args.workers} workers, {elapsed:.1f} s: {len(load.submitted)} requests done, "
          f"{ops} HTTP calls = {ops / elapsed:.0f} calls/s, {len(load.submitted) / elapsed:.1f} requests/s")
    for op, values in load.latency.items():
        print(f"  {op:15s} p50 {percentile_ms(values, 0.5):8.1f} ms  p99 {percentile_ms(values, 0.99):8.1f} ms  ({len(values)})")
    lost, twice, ran_twice = audit(JobStore(stack.redis), load.submitted)
    unique = len(set(load.submitted)) == len(load.submitted)
    print(f"  errors {len(load.errors)}; lost {lost}; completed twice {twice}; ran twice {ran_twice}; "
          f"ids unique {unique}")
    for err in sorted(set(load.errors))[:10]:
        print("   ", err)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp) / "v.mp4", frames=2)
        audio = make_wav(Path(tmp) / "a.wav", seconds=0.1)
        body = data_uri_body(video, audio, num_frames=2)
        stack = make_stack(Path(tmp) / "stack")
        try:
            stack.start_api("--log-level", "WARNING")
            for i in range(args.workers):
                stack.start_worker(f"load-w{i + 1}")
            asyncio.run(run(args, stack, body))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
