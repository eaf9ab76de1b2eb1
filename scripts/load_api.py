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

``--scenario`` (default ``normal``: the above) runs the same load under one of fault_recovery.py's faults,
with its slow peers and small disk (lipsync.testing.slow_peers):

    .venv/bin/python scripts/load_api.py --scenario disk_full --clients 4 --seconds 10 --workers 1

- ``disk_full`` (root: mounts a tmpfs): the storage directory fills at T/3 and is freed at 2T/3; half the
  clients upload their inputs first. Submits and uploads must be answered 507 ``storage_full`` / 503
  ``storage_error`` (no other 5xx), requests accepted before may end with those types, every request
  submitted after space returned must end OK.
- ``slow_download``: a share (``--share``) of the requests name a video served by a trickling server, with
  LIPSYNC_DOWNLOAD_TIMEOUT_S short: they must end ``file_download_error`` within the deadline + 1 s of
  starting, the rest OK.
- ``slow_webhook``: a share of the requests carry webhooks to trickling receivers, the rest to a fast one:
  every fast webhook must arrive, once, within the printed bound (half a slow attempt's deadline) of its
  request's completion.

Each prints requests, typed answers by type, p50/p99 per call and per request kind, lost / duplicated / stuck,
and the bound it checked; the exit status is 1 if anything was lost, duplicated or stuck, a 5xx was untyped
or a bound was broken.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lipsync.queue.jobs import JobStore  # noqa: E402
from lipsync.queue.records import RequestStatus
from lipsync.testing.media import data_uri_body, make_video, make_wav  # noqa: E402
from lipsync.testing.slow_peers import Receiver, Trickler, fill, mount_small_disk, unmount
from lipsync.testing.stack import API_KEYS, make_stack, percentile_ms

AUTH = {"Authorization": f"Key alice:{API_KEYS['alice']}"}


RETRYABLE = {502, 503, 504}
STUCK_AFTER_S = 120.0  # a request not COMPLETED by then counts as stuck (the audit says which)
# The only 5xx answers a client may see: Redis away, storage failing or full (each with Retry-After).
TYPED_5XX = {(503, "service_unavailable"), (503, "storage_error"), (507, "storage_full")}
STORAGE = frozenset({"storage_full", "storage_error"})


def error_type(r: httpx.Response) -> str:
    """An error answer's type: X-Fal-Error-Type, the body's error_type, or a 422's first detail type."""
    if r.headers.get("X-Fal-Error-Type"):
        return r.headers["X-Fal-Error-Type"]
    try:
        body = r.json()
    except ValueError:
        return "untyped"
    if isinstance(body, dict) and body.get("error_type"):
        return body["error_type"]
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        return detail[0].get("type", "untyped")
    return "untyped"


def default_plan(i: int) -> tuple[str, dict, dict]:
    return "normal", {}, {}


class Load:
    """``plan(i)`` gives the i-th submit's kind, body changes and query; ``allowed(kind, phase)`` the ends
    allowed ("OK" or error types); ``typed`` the refusals a client may get and back off from (error types)."""

    def __init__(self, base: str, body: dict, plan=default_plan, allowed=lambda kind, phase: {"OK"},
                 typed: frozenset[str] = frozenset(), media: dict[str, bytes] | None = None):
        self.base, self.body = base, body
        self.plan, self.allowed, self.typed, self.media = plan, allowed, typed, media or {}
        self.started_at = time.time()
        self.counter = itertools.count()
        self.phase = ""  # tags each request with the fault's phase when it was submitted (disk_full)
        self.kind: dict[str, tuple[str, str]] = {}  # request id -> (kind, phase)
        self.answers: Counter[str] = Counter()  # "op code type" of every typed error answer
        self.untyped_5xx = 0
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []
        self.submitted: list[str] = []
        self.retried_calls = 0
        self.hostile: list[str] = []

    def note(self, op: str, response: httpx.Response) -> str:
        """Counts an error answer by type; a 5xx outside TYPED_5XX is an error of its own."""
        kind = error_type(response)
        self.answers[f"{op} {response.status_code} {kind}"] += 1
        if response.status_code >= 500 and (response.status_code, kind) not in TYPED_5XX:
            self.untyped_5xx += 1
            self.errors.append(f"{op}: untyped HTTP {response.status_code} {kind}: {response.text[:80]}")
        return kind

    def refused(self, op: str, response: httpx.Response) -> bool:
        """True (after a pause) when a submit or upload was refused with a type this scenario expects."""
        if response.status_code == 200:
            return False
        if self.note(op, response) in self.typed:
            return True
        self.errors.append(f"{op} HTTP {response.status_code}")
        return True

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
            if response is not None:
                self.note(op, response)
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

    async def upload(self, http: httpx.AsyncClient, body: dict) -> bool:
        """Puts the inputs through /files/upload and their URLs in ``body``; False when one was refused."""
        for name in ("video", "audio"):
            r = await self.timed("upload", lambda name=name: http.post(f"{self.base}/files/upload",
                                                                       content=self.media[name]))
            if self.refused("upload", r):
                return False
            body[name] = r.json()["access_url"]
        return True

    async def client(self, n: int, until: float) -> None:
        async with httpx.AsyncClient(headers=AUTH, timeout=120) as http:
            while time.perf_counter() < until:
                try:
                    kind, changes, params = self.plan(next(self.counter))
                    body, phase = self.body | changes, self.phase
                    if kind == "upload" and not await self.upload(http, body):
                        await asyncio.sleep(0.2)
                        continue
                    r = await self.timed("submit", lambda body=body, params=params: http.post(
                        f"{self.base}/pipio/lipsync", json=body, params=params))
                    if self.refused("submit", r):
                        await asyncio.sleep(0.2 if self.typed else 0)
                        continue
                    sub = r.json()
                    self.submitted.append(sub["request_id"])
                    self.kind[sub["request_id"]] = (kind, phase)
                    follow = self.follow_stream if n % 2 else self.follow_polling
                    await follow(http, sub["status_url"])
                    result = await self.timed("result", lambda: http.get(sub["response_url"]))
                    if result.status_code != 200 and self.note("result", result) not in self.allowed(kind, phase):
                        self.errors.append(f"result HTTP {result.status_code}: {result.text[:120]}")
                except httpx.HTTPError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")


def audit(store: JobStore, ids: list[str], allowed=lambda rid: {"OK"},
          ends: Counter | None = None) -> dict[str, int]:
    """Over the submitted ids: lost (gone, or ended other than ``allowed(rid)``: "OK" or error types), stuck
    (not COMPLETED), completed more than once, ran more often than it was attempted, and retried (its worker
    was killed). ``ends`` counts each request's end by ``allowed``'s key."""
    counts = dict.fromkeys(["lost", "stuck", "completed twice", "ran twice", "retried"], 0)
    for rid in ids:
        record = store.get(rid)
        if record is None:
            counts["lost"] += 1
            continue
        if record.status is not RequestStatus.COMPLETED:
            counts["stuck"] += 1
            continue
        end = record.error.get("error_type", "untyped") if record.error else "OK"
        counts["lost"] += end not in allowed(rid)
        if ends is not None:
            ends[end] += 1
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


def in_share(i: int, share: float) -> bool:
    """Whether the i-th submit is one of the share (spread evenly: 0.25 picks the 4th, 8th, ...)."""
    return int((i + 1) * share) > int(i * share)


class Normal:
    """Today's load: every request OK. A scenario changes the stack, the requests and what is checked."""

    name = "normal"
    typed: frozenset[str] = frozenset()

    def __init__(self, args: argparse.Namespace, tmp: Path):
        self.args, self.tmp = args, tmp
        self.failures: list[str] = []

    def settings(self) -> dict[str, str]:
        return {}

    def plan(self, i: int) -> tuple[str, dict, dict]:
        return default_plan(i)

    def allowed(self, kind: str, phase: str) -> set[str]:
        return {"OK"}

    async def during(self, load: Load, until: float) -> None:
        """Runs alongside the clients (the fault itself)."""

    async def check(self, load: Load, store: JobStore) -> None:
        """Prints the scenario's own figures and appends to ``failures`` what broke its bound."""

    def close(self) -> None:
        pass


class DiskFull(Normal):
    name = "disk_full"
    typed = STORAGE

    def __init__(self, args, tmp):
        super().__init__(args, tmp)
        self.disk = tmp / "small-disk"
        self.mounted = mount_small_disk(self.disk, "32m")
        self.full_at = self.freed_at = 0.0

    def settings(self):
        return {"storage_dir": str(self.disk / "storage")}

    def plan(self, i):
        return ("upload" if i % 2 else "data-uri"), {}, {}

    def allowed(self, kind, phase):
        return {"OK"} if phase == "after" else {"OK", *STORAGE}

    async def during(self, load, until):
        third = (until - time.perf_counter()) / 3
        await asyncio.sleep(third)
        load.phase, self.full_at = "full", time.time()
        filler = await asyncio.to_thread(fill, self.disk)
        await asyncio.sleep(max(0.0, self.full_at + third - time.time()))
        filler.unlink()
        load.phase, self.freed_at = "after", time.time()

    async def check(self, load, store):
        phases = Counter(phase for _, phase in load.kind.values())
        after = [store.get(rid) for rid, (_, phase) in load.kind.items() if phase == "after"]
        done = sorted(r.completed_at for r in after if r and r.completed_at and not r.error)
        first = f"{done[0] - self.freed_at:.1f} s" if done else "never"
        print(f"  disk full {self.full_at - load.started_at:.1f}..{self.freed_at - load.started_at:.1f} s wall; "
              f"accepted before/while full/after: {phases['']}/{phases['full']}/{phases['after']}; "
              f"first request OK after space returned: {first}; untyped 5xx: {load.untyped_5xx} (bound 0)")
        if not any(k.split()[1] in {"503", "507"} for k in load.answers):
            self.failures.append("the disk never refused a write (no 507/503 seen)")
        if not done:
            self.failures.append("no request completed OK after space returned")

    def close(self):
        if self.mounted:
            unmount(self.disk)


class SlowDownload(Normal):
    name = "slow_download"

    def __init__(self, args, tmp):
        super().__init__(args, tmp)
        self.tricklers = [Trickler() for _ in range(2)]
        self.bound_s = args.download_timeout + 1.0

    def settings(self):
        return {"allow_private_urls": "true", "download_timeout_s": str(self.args.download_timeout)}

    def plan(self, i):
        if in_share(i, self.args.share):
            return "slow", {"video": self.tricklers[i % len(self.tricklers)].url}, {}
        return "normal", {}, {}

    def allowed(self, kind, phase):
        return {"file_download_error"} if kind == "slow" else {"OK"}

    async def check(self, load, store):
        records = [store.get(rid) for rid, (kind, _) in load.kind.items() if kind == "slow"]
        took = [r.completed_at - (r.started_at or r.created_at) for r in records if r and r.completed_at]
        late = sum(t > self.bound_s for t in took)
        print(f"  slow downloads (deadline {self.args.download_timeout:g} s): {len(took)} ended, start to end "
              f"p50 {percentile_ms(took, 0.5) / 1000:.2f} s, max {max(took, default=float('nan')):.2f} s; "
              f"bound {self.bound_s:.1f} s, over it: {late}")
        if late:
            self.failures.append(f"{late} slow downloads ran past {self.bound_s:.1f} s")
        if not took:
            self.failures.append("no slow download was submitted")

    def close(self):
        for t in self.tricklers:
            t.close()


class SlowWebhook(Normal):
    name = "slow_webhook"
    DEADLINE_S = 3.0

    def __init__(self, args, tmp):
        super().__init__(args, tmp)
        self.tricklers, self.fast = [Trickler() for _ in range(4)], Receiver()
        self.bound_s = self.DEADLINE_S / 2  # under one slow attempt: no fast webhook waited behind one

    def settings(self):
        return {"allow_private_urls": "true", "webhook_timeout_s": str(self.DEADLINE_S),
                "webhook_max_attempts": "2", "webhook_backoff_s": "0.5"}

    def plan(self, i):
        if in_share(i, self.args.share):
            return "slow hook", {}, {"fal_webhook": self.tricklers[i % len(self.tricklers)].url}
        return "fast hook", {}, {"fal_webhook": self.fast.url}

    def webhooks(self) -> dict[str, list[float]]:
        """Request id -> wall-clock arrivals at the fast receiver."""
        to_wall = time.time() - time.monotonic()
        arrivals = defaultdict(list)
        for at, raw in list(self.fast.received):
            arrivals[json.loads(raw)["request_id"]].append(at + to_wall)
        return arrivals

    async def check(self, load, store):
        fast = [rid for rid, (kind, _) in load.kind.items() if kind == "fast hook"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(rid in self.webhooks() for rid in fast):
            await asyncio.sleep(0.2)
        arrivals, delays, missing = self.webhooks(), [], 0
        for rid in fast:
            record = store.get(rid)
            if rid not in arrivals or not record or not record.completed_at:
                missing += 1
                continue
            delays.append(max(0.0, arrivals[rid][0] - record.completed_at))
        twice = sum(len(v) > 1 for v in arrivals.values())
        late = sum(d > self.bound_s for d in delays)
        print(f"  webhooks (slow attempt deadline {self.DEADLINE_S:g} s): fast receiver got {len(delays)} of "
              f"{len(fast)}, delay after completion p50 {percentile_ms(delays, 0.5):.0f} ms, p99 "
              f"{percentile_ms(delays, 0.99):.0f} ms, max {1000 * max(delays, default=float('nan')):.0f} ms; "
              f"bound {1000 * self.bound_s:.0f} ms, over it: {late}; missing {missing}; delivered twice {twice}; "
              f"slow receivers' attempts {sum(t.calls for t in self.tricklers)}")
        if late or missing or twice:
            self.failures.append(f"fast webhooks: {late} late, {missing} missing, {twice} twice")
        if not any(kind == "slow hook" for kind, _ in load.kind.values()):
            self.failures.append("no slow webhook was submitted")

    def close(self):
        self.fast.close()
        for t in self.tricklers:
            t.close()


SCENARIOS = {s.name: s for s in (Normal, DiskFull, SlowDownload, SlowWebhook)}


async def run(args: argparse.Namespace, stack, body: dict, scenario: Normal, media: dict[str, bytes]) -> bool:
    load = Load(stack.base_url, body, scenario.plan, scenario.allowed, scenario.typed, media)
    started = time.perf_counter()
    load.started_at = time.time()
    until = started + args.seconds
    faults: list[tuple[str, float]] = []
    extra = [inject_faults(stack, args.fault_every, until, faults)] if args.fault_every else []
    extra += [load.hostile_client(until)] if args.hostile else []
    extra += [scenario.during(load, until)]
    await asyncio.gather(*(load.client(n, until) for n in range(args.clients)), *extra)
    elapsed = time.perf_counter() - started
    ops = sum(len(v) for k, v in load.latency.items() if k != "stream (whole)")
    label = "" if scenario.name == "normal" else f"[{scenario.name}] "
    print(f"{label}{args.clients} clients, {args.workers} workers, {elapsed:.1f} s: {len(load.submitted)} requests done, "
          f"{ops} HTTP calls = {ops / elapsed:.0f} calls/s, {len(load.submitted) / elapsed:.1f} requests/s")
    for op, values in load.latency.items():
        print(f"  {op:15s} p50 {percentile_ms(values, 0.5):8.1f} ms  p99 {percentile_ms(values, 0.99):8.1f} ms  ({len(values)})")
    store = JobStore(stack.redis)
    if scenario.name != "normal":
        by_kind: dict[str, list[float]] = defaultdict(list)
        for rid, (kind, _) in load.kind.items():
            record = store.get(rid)
            if record and record.completed_at:
                by_kind[kind].append(record.completed_at - record.created_at)
        for kind, values in sorted(by_kind.items()):
            print(f"  {'request ' + kind:15s} p50 {percentile_ms(values, 0.5):8.1f} ms  p99 "
                  f"{percentile_ms(values, 0.99):8.1f} ms  ({len(values)}, submit to completed)")
    ends: Counter[str] = Counter()
    counts = audit(store, load.submitted, lambda rid: load.allowed(*load.kind[rid]), ends)
    unique = len(set(load.submitted)) == len(load.submitted)
    print(f"  errors {len(load.errors)}; " + "; ".join(f"{k} {v}" for k, v in counts.items())
          + f"; ids unique {unique}; calls retried on 503/dropped connection {load.retried_calls}")
    if scenario.name != "normal":
        print(f"  ended: {dict(sorted(ends.items()))}; typed error answers: {dict(sorted(load.answers.items()))}")
    if faults:
        print("  recovery: " + "; ".join(recovery_times(store, load.submitted, faults)))
    if args.hostile:
        print(f"  hostile JSON: {len(load.latency['hostile'])} answers, wrong or dropped {len(load.hostile)} "
              f"{sorted(set(load.hostile))[:5]}")
    await scenario.check(load, store)
    for err in sorted(set(load.errors))[:10]:
        print("   ", err)
    failures = list(scenario.failures)
    bad = {k: v for k, v in counts.items() if k in ("lost", "stuck", "completed twice", "ran twice") and v}
    if bad or not unique:
        failures.append("lost/duplicated/stuck: " + ", ".join(f"{k} {v}" for k, v in bad.items())
                        + ("" if unique else ", ids not unique"))
    if load.untyped_5xx:
        failures.append(f"{load.untyped_5xx} untyped 5xx answers")
    print(f"  {'FAIL: ' + '; '.join(failures) if failures else 'PASS'}")
    return not failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fault-every", type=float, default=0, help="seconds between faults (0: none)")
    parser.add_argument("--hostile", action="store_true", help="add a client sending hostile JSON")
    parser.add_argument("--scenario", choices=list(SCENARIOS), default="normal", help="a fault under the load")
    parser.add_argument("--share", type=float, default=0.25, help="slow_*: share of requests with a slow peer")
    parser.add_argument("--download-timeout", type=float, default=2.0, help="slow_download: LIPSYNC_DOWNLOAD_TIMEOUT_S")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        video = make_video(Path(tmp) / "v.mp4", frames=2)
        audio = make_wav(Path(tmp) / "a.wav", seconds=0.1)
        body = data_uri_body(video, audio, num_frames=2)
        scenario = SCENARIOS[args.scenario](args, Path(tmp))
        if isinstance(scenario, DiskFull) and not scenario.mounted:
            print("disk_full: skipped (needs root to mount a small tmpfs)")
            return
        ok = False
        try:
            stack = make_stack(Path(tmp) / "stack", appendonly=bool(args.fault_every), **scenario.settings())
            try:
                stack.start_api("--log-level", "WARNING")
                for i in range(args.workers):
                    stack.start_worker(f"load-w{i + 1}")
                media = {"video": video.read_bytes(), "audio": audio.read_bytes()}
                ok = asyncio.run(run(args, stack, body, scenario, media))
            finally:
                stack.stop()
        finally:
            scenario.close()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
