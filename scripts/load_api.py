"""Load test: N concurrent clients submit, poll and stream for T seconds; nothing may be lost or duplicated.

Starts redis-server + the API + W workers (the tests' small re-encode pipeline) on 127.0.0.1:

    .venv/bin/python scripts/load_api.py --clients 16 --seconds 20 --workers 2
    .venv/bin/python scripts/load_api.py --clients 8 --seconds 60 --workers 2 --fault-every 10 --hostile

Each client loops: submit a tiny request, follow it to COMPLETED (half the clients poll the status URL, half
read the SSE stream), fetch the result. Afterwards every submitted id is checked in Redis: it must have
reached COMPLETED exactly once (one COMPLETED event in its stream), without an error, and have run exactly
once (one "Fetching inputs" line) unless its worker was killed (then once per attempt). Prints requests/s,
p50/p99 per operation, errors, lost, duplicated and stuck requests.

``--fault-every S``: every S seconds, in turn, SIGKILL a worker (a new one starts, as ``lipsync serve`` does)
or SIGKILL redis-server (AOF on) and start it again; clients ride out 503s and dropped connections by
retrying. Prints each fault's recovery time (until the next request completed). ``--hostile``: one more
client sends hostile JSON on one kept-alive connection; every answer must be a 4xx on the same connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lipsync.queue.jobs import JobStore  # noqa: E402
from lipsync.queue.records import RequestStatus
from lipsync.testing.media import data_uri_body, make_video, make_wav  # noqa: E402
from lipsync.testing.stack import API_KEYS, make_stack, percentile_ms

AUTH = {"Authorization": f"Key alice:{API_KEYS['alice']}"}


RETRYABLE = {502, 503, 504}
STUCK_AFTER_S = 120.0  # a request not COMPLETED by then counts as stuck (the audit says which)


class Load:
    def __init__(self, base: str, body: dict):
        self.base, self.body = base, body
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []
        self.submitted: list[str] = []
        self.retried_calls = 0
        self.hostile: list[str] = []

    async def timed(self, op: str, make_call):
        """One call, retried (as the official clients do) while the server is unavailable or unreachable."""
        for attempt in range(60):
            t0 = time.perf_counter()
            try:
                response = await make_call()
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code not in RETRYABLE:
                self.latency[op].append(time.perf_counter() - t0)
                return response
            self.retried_calls += 1
            await asyncio.sleep(min(0.25 * 2**attempt, 2.0))
        raise httpx.HTTPError(f"{op}: still unavailable after 60 tries")

    async def follow_polling(self, http: httpx.AsyncClient, status_url: str) -> None:
        deadline = time.perf_counter() + STUCK_AFTER_S
        while time.perf_counter() < deadline:
            r = await self.timed("status", lambda: http.get(status_url, params={"logs": 1}))
            if r.json()["status"] == "COMPLETED":
                return
            await asyncio.sleep(0.1)
        self.errors.append(f"not COMPLETED after {STUCK_AFTER_S:.0f} s (stuck)")

    async def follow_stream(self, http: httpx.AsyncClient, status_url: str) -> None:
        t0 = time.perf_counter()
        last = None
        try:
            async with http.stream("GET", status_url + "/stream", params={"logs": 1}) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        last = json.loads(line[6:])
        except httpx.TransportError:  # the API lost Redis or the connection mid-stream: poll to the end
            self.retried_calls += 1
        if not last or last["status"] != "COMPLETED":
            await self.follow_polling(http, status_url)
        self.latency["stream (whole)"].append(time.perf_counter() - t0)

    async def hostile_client(self, until: float) -> None:
        """Hostile JSON on one kept-alive connection: every answer a 4xx, and the connection never dropped."""
        from lipsync.server.http import MAX_JSON_DEPTH

        payloads = [b"[" * (MAX_JSON_DEPTH * 1000) + b"]" * (MAX_JSON_DEPTH * 1000), b'{"seed": ' + b"9" * 5000 + b"}",
                    b'{"seed": NaN}', b'{"num_frames": 1e400}', b'{"height": 8192}']
        async with httpx.AsyncClient(headers=AUTH | {"Content-Type": "application/json"}, timeout=30,
                                     limits=httpx.Limits(max_connections=1)) as http:
            while time.perf_counter() < until:
                for raw in payloads:
                    try:
                        r = await http.post(f"{self.base}/pipio/lipsync", content=raw)
                    except httpx.TransportError as exc:
                        self.hostile.append(f"dropped: {type(exc).__name__}")
                        continue
                    if not 400 <= r.status_code < 500 and r.status_code != 503:
                        self.hostile.append(f"HTTP {r.status_code}")
                    self.latency["hostile"].append(r.elapsed.total_seconds())
                await asyncio.sleep(0.2)

    async def client(self, n: int, until: float) -> None:
        async with httpx.AsyncClient(headers=AUTH, timeout=120) as http:
            while time.perf_counter() < until:
                try:
                    r = await self.timed("submit", lambda: http.post(f"{self.base}/pipio/lipsync", json=self.body))
                    if r.status_code != 200:
                        self.errors.append(f"submit HTTP {r.status_code}")
                        continue
                    sub = r.json()
                    self.submitted.append(sub["request_id"])
                    follow = self.follow_stream if n % 2 else self.follow_polling
                    await follow(http, sub["status_url"])
                    result = await self.timed("result", lambda: http.get(sub["response_url"]))
                    if result.status_code != 200:
                        self.errors.append(f"result HTTP {result.status_code}: {result.text[:120]}")
                except httpx.HTTPError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")


def audit(store: JobStore, ids: list[str]) -> dict[str, int]:
    """Over the submitted ids: lost (gone, or ended with an error), stuck (not COMPLETED), completed more than
    once, ran more often than it was attempted, and retried (its worker was killed)."""
    counts = dict.fromkeys(["lost", "stuck", "completed twice", "ran twice", "retried"], 0)
    for rid in ids:
        record = store.get(rid)
        if record is None:
            counts["lost"] += 1
            continue
        if record.status is not RequestStatus.COMPLETED:
            counts["stuck"] += 1
            continue
        counts["lost"] += record.error is not None
        events = store.events(rid)
        runs = sum(1 for e in events if e.kind == "log" and e.data.get("message") == "Fetching inputs")
        counts["completed twice"] += sum(1 for e in events if e.kind == "status" and e.data.get("status") == "COMPLETED") != 1
        counts["ran twice"] += runs > record.runner_attempts + 1
        counts["retried"] += record.runner_attempts > 0
    return counts


async def inject_faults(stack, every_s: float, until: float, faults: list[tuple[str, float]]) -> None:
    """In turn: SIGKILL the oldest worker and start a new one; SIGKILL redis-server and start it again."""
    n = 0
    while time.perf_counter() + every_s < until:
        await asyncio.sleep(every_s)
        n += 1
        if n % 2:
            victim = stack.workers.pop(0)
            faults.append(("worker SIGKILL", time.time()))
            victim.kill(signal.SIGKILL)
            await asyncio.to_thread(stack.start_worker, f"load-r{n}")
        else:
            faults.append(("redis SIGKILL", time.time()))
            await asyncio.to_thread(stack.restart_redis, signal.SIGKILL)


def recovery_times(store: JobStore, ids: list[str], faults: list[tuple[str, float]]) -> list[str]:
    """Per fault: seconds until the next request completed OK after it."""
    done = sorted(r.completed_at for r in map(store.get, ids) if r and r.completed_at and not r.error)
    out = []
    for kind, at in faults:
        after = next((t for t in done if t > at), None)
        out.append(f"{kind} at +{at - faults[0][1]:.0f} s: " + (f"{after - at:.1f} s" if after else "never"))
    return out


async def run(args: argparse.Namespace, stack, body: dict) -> None:
    load = Load(stack.base_url, body)
    started = time.perf_counter()
    until = started + args.seconds
    faults: list[tuple[str, float]] = []
    extra = [inject_faults(stack, args.fault_every, until, faults)] if args.fault_every else []
    extra += [load.hostile_client(until)] if args.hostile else []
    await asyncio.gather(*(load.client(n, until) for n in range(args.clients)), *extra)
    elapsed = time.perf_counter() - started
    ops = sum(len(v) for k, v in load.latency.items() if k != "stream (whole)")
    print(f"{args.clients} clients, {args.workers} workers, {elapsed:.1f} s: {len(load.submitted)} requests done, "
          f"{ops} HTTP calls = {ops / elapsed:.0f} calls/s, {len(load.submitted) / elapsed:.1f} requests/s")
    for op, values in load.latency.items():
        print(f"  {op:15s} p50 {percentile_ms(values, 0.5):8.1f} ms  p99 {percentile_ms(values, 0.99):8.1f} ms  ({len(values)})")
    store = JobStore(stack.redis)
    counts = audit(store, load.submitted)
    unique = len(set(load.submitted)) == len(load.submitted)
    print(f"  errors {len(load.errors)}; " + "; ".join(f"{k} {v}" for k, v in counts.items())
          + f"; ids unique {unique}; calls retried on 503/dropped connection {load.retried_calls}")
    if faults:
        print("  recovery: " + "; ".join(recovery_times(store, load.submitted, faults)))
    if args.hostile:
        print(f"  hostile JSON: {len(load.latency['hostile'])} answers, wrong or dropped {len(load.hostile)} "
              f"{sorted(set(load.hostile))[:5]}")
    for err in sorted(set(load.errors))[:10]:
        print("   ", err)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fault-every", type=float, default=0, help="seconds between faults (0: none)")
    parser.add_argument("--hostile", action="store_true", help="add a client sending hostile JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp) / "v.mp4", frames=2)
        audio = make_wav(Path(tmp) / "a.wav", seconds=0.1)
        body = data_uri_body(video, audio, num_frames=2)
        stack = make_stack(Path(tmp) / "stack", appendonly=bool(args.fault_every))
        try:
            stack.start_api("--log-level", "WARNING")
            for i in range(args.workers):
                stack.start_worker(f"load-w{i + 1}")
            asyncio.run(run(args, stack, body))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
