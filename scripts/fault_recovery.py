"""Measure recovery from faults with the default settings, and count lost, duplicated and stuck requests.

    .venv/bin/python scripts/fault_recovery.py

Each scenario prints its recovery times and ``lost / duplicated / stuck`` (all must be 0):

1. A worker is SIGKILLed mid-job: seconds until its request is queued again and until it COMPLETED OK on a
   second worker (bounded by heartbeat_ttl_s + reaper_interval_s: 13 s by default, + the run itself).
2. A worker is SIGSTOPped mid-job (alive but silent): its request moves to another worker; the stalled one
   wakes up and must drop its attempt (never two completions).
3. redis-server is SIGKILLed with requests queued (AOF) and restarted: survivors, seconds until the API
   answers again and until all completed.
4. ``lipsync serve``: SIGKILL of its worker (seconds until a new worker is live, until the request completed),
   SIGKILL of its Redis (seconds of 503 answers, until ready, until the queued requests completed), SIGTERM
   (seconds to exit, processes left).
5. Hostile input on one kept-alive connection: every payload answered 4xx and the connection kept.
6. Storage disk full (a 4 MiB tmpfs; root only): submits and uploads answered 507, requests whose result
   could not be written end ``storage_full``; seconds from freeing space to the first request done.
7. Slow downloads (a server that trickles its headers) with LIPSYNC_DOWNLOAD_TIMEOUT_S=5: seconds each one
   took to end ``file_download_error``, and a normal request's time alongside them.
8. Slow webhook receivers (trickling replies) with LIPSYNC_WEBHOOK_TIMEOUT_S=3: seconds an attempt took,
   and the delay of another user's webhook to a fast receiver meanwhile.
"""

from __future__ import annotations

import http.client
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lipsync.queue.jobs import JobStore  # noqa: E402
from lipsync.queue.records import RequestStatus
from lipsync.testing.serve import Serve  # noqa: E402
from lipsync.testing.media import data_uri_body, make_video, make_wav  # noqa: E402
from lipsync.testing.slow_peers import Receiver, Trickler, fill, mount_small_disk, unmount  # noqa: E402
from lipsync.testing.stack import API_KEYS, make_stack, wait_until

AUTH = {"Authorization": f"Key alice:{API_KEYS['alice']}"}
DEFAULTS = {"heartbeat_interval_s": "2", "heartbeat_ttl_s": "10", "reaper_interval_s": "3"}


def body(tmp: Path, **extra) -> dict:
    video, audio = make_video(tmp / "v.mp4", frames=30), make_wav(tmp / "a.wav", seconds=1.2)
    return data_uri_body(video, audio, **extra)


def slow(tmp: Path, per_frame: float = 0.2, frames: int = 30) -> dict:
    return body(tmp, use_custom_prompt=True, custom_prompt=f"test:slow={per_frame}", num_frames=frames)


def status(sub: dict, headers: dict = AUTH) -> dict:
    return httpx.get(sub["status_url"], headers=headers, timeout=10).json()


def submit(base: str, payload: dict, headers: dict = AUTH) -> dict:
    return httpx.post(f"{base}/pipio/lipsync", headers=headers, json=payload, timeout=30).json()


def audit(store: JobStore, ids: list[str], *, ok_expected: bool = True) -> str:
    """lost (no record or an error where OK was expected), duplicated (COMPLETED twice), stuck (not COMPLETED)."""
    lost = duplicated = stuck = 0
    for rid in ids:
        record = store.get(rid)
        if record is None:
            lost += 1
            continue
        if record.status is not RequestStatus.COMPLETED:
            stuck += 1
            continue
        lost += ok_expected and record.error is not None
        completions = sum(1 for e in store.events(rid) if e.kind == "status" and e.data.get("status") == "COMPLETED")
        duplicated += completions != 1
    return f"lost {lost}, duplicated {duplicated}, stuck {stuck}"


def killed_worker(tmp: Path) -> None:
    stack = make_stack(tmp / "kill", **DEFAULTS)
    try:
        stack.start_api("--log-level", "WARNING")
        worker = stack.start_worker("victim")
        sub = submit(stack.base_url, slow(tmp))
        wait_until(lambda: status(sub)["status"] == "IN_PROGRESS", 30, "start")
        time.sleep(2.5)
        worker.kill(signal.SIGKILL)
        t0 = time.monotonic()
        stack.start_worker("successor")
        wait_until(lambda: int(stack.redis.hget(f"lipsync:req:{sub['request_id']}", "runner_attempts") or 0), 60,
                   "requeue", 0.05)
        requeued = time.monotonic() - t0
        final = wait_until(lambda: (s := status(sub))["status"] == "COMPLETED" and s, 90, "completion", 0.05)
        print(f"1. worker SIGKILL mid-job: queued again after {requeued:.1f} s, COMPLETED "
              f"{'OK' if 'error' not in final else final['error_type']} after {time.monotonic() - t0:.1f} s; "
              + audit(JobStore(stack.redis), [sub["request_id"]]))
    finally:
        stack.stop()


def stalled_worker(tmp: Path) -> None:
    stack = make_stack(tmp / "stall", **DEFAULTS)
    try:
        stack.start_api("--log-level", "WARNING")
        stalled = stack.start_worker("stalled")
        sub = submit(stack.base_url, slow(tmp))
        wait_until(lambda: status(sub)["status"] == "IN_PROGRESS", 30, "start")
        stalled.popen.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        stack.start_worker("successor")
        wait_until(lambda: stack.redis.hget(f"lipsync:req:{sub['request_id']}", "worker") == b"successor", 60,
                   "the successor", 0.05)
        moved = time.monotonic() - t0
        stalled.popen.send_signal(signal.SIGCONT)
        final = wait_until(lambda: (s := status(sub))["status"] == "COMPLETED" and s, 90, "completion", 0.05)
        time.sleep(2)
        dropped = "dropping this attempt" in stalled.log() or "result dropped" in stalled.log()
        print(f"2. worker SIGSTOP mid-job: taken over after {moved:.1f} s, COMPLETED "
              f"{'OK' if 'error' not in final else final['error_type']} after {time.monotonic() - t0:.1f} s; "
              f"stalled worker dropped its attempt: {dropped}; " + audit(JobStore(stack.redis), [sub["request_id"]]))
    finally:
        stack.stop()


def redis_crash(tmp: Path, n: int = 20) -> None:
    stack = make_stack(tmp / "aof", appendonly=True, **DEFAULTS)
    try:
        stack.start_api("--log-level", "WARNING")
        subs = [submit(stack.base_url, body(tmp, num_frames=2)) for _ in range(n)]
        time.sleep(1.5)
        t0 = time.monotonic()
        stack.restart_redis(signal.SIGKILL)
        wait_until(lambda: httpx.get(f"{stack.base_url}/readyz").status_code == 200, 30, "readiness", 0.02)
        ready = time.monotonic() - t0
        survived = sum(status(s)["status"] == "IN_QUEUE" for s in subs)
        stack.start_worker("after-crash")
        for s in subs:
            wait_until(lambda s=s: status(s)["status"] == "COMPLETED", 60, "completion", 0.05)
        print(f"3. redis SIGKILL with {n} queued (AOF): {survived}/{n} survived; API ready again after {ready:.1f} s; "
              f"all completed {time.monotonic() - t0:.1f} s after the crash (worker start included); "
              + audit(JobStore(stack.redis), [s["request_id"] for s in subs]))
    finally:
        stack.stop()


def serve_faults(tmp: Path, n: int = 5) -> None:
    (tmp / "serve").mkdir(exist_ok=True)
    serve = Serve(tmp / "serve" / "data", **DEFAULTS)
    open_auth: dict = {}  # serve with no LIPSYNC_API_KEYS: open
    try:
        serve.ready()
        store = JobStore(redis.Redis.from_url(_redis_url(serve)))  # Redis comes back on the same port
        ids = []
        # worker SIGKILL
        sub = submit(serve.base, slow(tmp), open_auth)
        ids.append(sub["request_id"])
        wait_until(lambda: status(sub, open_auth)["status"] == "IN_PROGRESS", 30, "start")
        old = set(store.live_workers())
        serve.child("lipsync worker").kill()
        t0 = time.monotonic()
        wait_until(lambda: set(store.live_workers()) - old, 60, "a new worker", 0.05)
        live = time.monotonic() - t0
        final = wait_until(lambda: (s := status(sub, open_auth))["status"] == "COMPLETED" and s, 120, "completion", 0.05)
        print(f"4a. serve, worker SIGKILL mid-job: new worker live after {live:.1f} s; request COMPLETED "
              f"{'OK' if 'error' not in final else final['error_type']} after {time.monotonic() - t0:.1f} s")
        # Redis SIGKILL with requests queued
        queued = [submit(serve.base, slow(tmp, 0.05, 10), open_auth) for _ in range(n)]
        ids += [s["request_id"] for s in queued]
        time.sleep(1.5)
        serve.child("redis-server").kill()
        t0, first_ok, refused = time.monotonic(), None, 0
        while first_ok is None and time.monotonic() - t0 < 60:
            try:
                code = httpx.get(f"{serve.base}/readyz", timeout=2).status_code
            except httpx.HTTPError:
                code = 0
            refused += code == 503
            if code == 200:
                first_ok = time.monotonic() - t0
            time.sleep(0.05)
        for s in queued:
            wait_until(lambda s=s: status(s, open_auth)["status"] == "COMPLETED", 120, "completion", 0.05)
        print(f"4b. serve, redis SIGKILL with {n} queued: 503 answers for {first_ok:.1f} s ({refused} polls), "
              f"all completed {time.monotonic() - t0:.1f} s after the crash; " + audit(store, ids))
        children = serve.descendants()
        t0 = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        serve.proc.wait(60)
        left = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        print(f"4c. serve SIGTERM: exited after {time.monotonic() - t0:.1f} s; processes left: {len(left)}")
    finally:
        serve.stop()


def _redis_url(serve: Serve) -> str:
    # redis-server rewrites its command line to "redis-server 127.0.0.1:<port>"
    port = re.search(r"127\.0\.0\.1:(\d+)", " ".join(serve.child("redis-server").cmdline())).group(1)
    return f"redis://127.0.0.1:{port}/0"


HOSTILE = {
    "deep nesting 1e5": b'{"video": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "int of 5000 digits": b'{"video": "https://e.com/a.mp4", "audio": "https://e.com/a.wav", "seed": ' + b"9" * 5000 + b"}",
    "NaN": b'{"video": "https://e.com/a.mp4", "audio": "https://e.com/a.wav", "seed": NaN}',
    "Infinity": b'{"video": "https://e.com/a.mp4", "audio": "https://e.com/a.wav", "seed": Infinity}',
    "1e400": b'{"video": "https://e.com/a.mp4", "audio": "https://e.com/a.wav", "num_frames": 1e400}',
    "addition 1e9 frames": b'{"video": "https://e.com/a.mp4", "audio": "https://e.com/a.wav", "num_frames": 10, '
                           b'"edit_addition_start_frames": [1], "edit_addition_durations": [1000000000]}',
    "height 8192": b'{"video": "https://e.com/a.mp4", "audio": "https://e.com/a.wav", "height": 8192}',
    "feed_forward_num_splits 1e18": b'{"video": "https://e.com/a.mp4", "audio": "https://e.com/a.wav", '
                                    b'"feed_forward_num_splits": 1000000000000000000}',
}


def hostile_input(tmp: Path) -> None:
    stack = make_stack(tmp / "hostile", **DEFAULTS)
    try:
        stack.start_api("--log-level", "WARNING")
        parts = urlsplit(stack.base_url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.connect()
        sock, answers = conn.sock, []
        for name, raw in HOSTILE.items():
            t0 = time.perf_counter()
            conn.request("POST", "/pipio/lipsync", body=raw,
                         headers={"Authorization": AUTH["Authorization"], "Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            answers.append(f"{name}: {response.status} in {1000 * (time.perf_counter() - t0):.0f} ms")
        kept = conn.sock is sock
        queued = stack.redis.llen("rq:queue:lipsync")
        print(f"5. hostile input on one connection: {'; '.join(answers)}; connection kept: {kept}; queued: {queued}")
    finally:
        stack.stop()


def _done(sub: dict) -> dict | bool:
    return (s := status(sub))["status"] == "COMPLETED" and s


def disk_full(tmp: Path) -> None:
    disk = tmp / "small-disk"
    if not mount_small_disk(disk):
        print("6. disk full: skipped (needs root to mount a small tmpfs)")
        return
    stack = make_stack(tmp / "full", storage_dir=str(disk / "storage"), **DEFAULTS)
    try:
        base = stack.start_api("--log-level", "WARNING")
        stack.start_worker("full-w1")
        video, audio = make_video(tmp / "fv.mp4", frames=30), make_wav(tmp / "fa.wav", seconds=1.2)
        urls = [httpx.post(f"{base}/files/upload", headers=AUTH, content=p.read_bytes()).json()["access_url"]
                for p in (video, audio)]
        filler = fill(disk)
        codes = [httpx.post(f"{base}/pipio/lipsync", headers=AUTH, json=body(tmp, num_frames=4)).status_code
                 for _ in range(3)]
        codes += [httpx.post(f"{base}/files/upload", headers=AUTH, content=b"x" * 200_000).status_code for _ in range(3)]
        during = [submit(base, {"video": urls[0], "audio": urls[1], "num_frames": 30}) for _ in range(3)]
        ends = [wait_until(lambda s=s: _done(s), 60, "an end")["error_type"] for s in during]
        filler.unlink()
        t0 = time.monotonic()
        after = [submit(base, body(tmp, num_frames=4)) for _ in range(3)]
        for sub in after:
            wait_until(lambda sub=sub: _done(sub), 60, "recovery")
        print(f"6. disk full: submits/uploads answered {sorted(set(codes))} ({len(codes)} tries), requests ended "
              f"{sorted(set(ends))}; after freeing space 3 requests done in {time.monotonic() - t0:.1f} s; during: "
              + audit(JobStore(stack.redis), [s["request_id"] for s in during], ok_expected=False) + "; after: "
              + audit(JobStore(stack.redis), [s["request_id"] for s in after]))
    finally:
        stack.stop()
        unmount(disk)


def slow_download(tmp: Path) -> None:
    tricklers = [Trickler() for _ in range(4)]
    stack = make_stack(tmp / "slowdl", allow_private_urls="true", download_timeout_s="5", **DEFAULTS)
    try:
        base = stack.start_api("--log-level", "WARNING")
        stack.start_worker("slowdl-w1")
        stack.start_worker("slowdl-w2")
        t0 = time.monotonic()
        slow_subs = [submit(base, body(tmp, num_frames=4) | {"video": t.url}) for t in tricklers]
        normal = submit(base, body(tmp, num_frames=4))
        took, ends = [], []
        for sub in slow_subs:
            ends.append(wait_until(lambda sub=sub: _done(sub), 120, "an end")["error_type"])
            took.append(time.monotonic() - t0)
        wait_until(lambda: _done(normal), 120, "the normal one")
        store = JobStore(stack.redis)
        durations = [round((r.completed_at or 0) - (r.started_at or r.created_at), 1)
                     for r in (store.get(s["request_id"]) for s in slow_subs)]
        print(f"7. slow downloads (deadline 5 s): each ran {durations} s and ended {sorted(set(ends))}; all ended "
              f"{max(took):.1f} s after submit (2 workers); a normal request alongside: done; "
              + audit(store, [s["request_id"] for s in slow_subs], ok_expected=False) + "; normal: "
              + audit(store, [normal["request_id"]]))
    finally:
        stack.stop()
        for t in tricklers:
            t.close()


def slow_webhook(tmp: Path) -> None:
    tricklers, fast = [Trickler() for _ in range(4)], Receiver()
    stack = make_stack(tmp / "slowhook", allow_private_urls="true", webhook_timeout_s="3", webhook_max_attempts="2",
                       webhook_backoff_s="0.5", **DEFAULTS)
    try:
        base = stack.start_api("--log-level", "WARNING")
        stack.start_worker("slowhook-w1")
        payload = body(tmp, num_frames=4)
        hooked = [httpx.post(f"{base}/pipio/lipsync", headers=AUTH, json=payload, params={"fal_webhook": t.url}).json()
                  for t in tricklers]
        wait_until(lambda: all(t.calls for t in tricklers), 60, "the slow attempts")
        t_first = time.monotonic()
        wait_until(lambda: all(t.open == 0 for t in tricklers), 30, "the first attempts to end")
        attempt_s = time.monotonic() - t_first
        delays = []
        for _ in range(3):
            n = len(fast.arrivals)
            quick = httpx.post(f"{base}/pipio/lipsync", headers=AUTH, json=payload,
                               params={"fal_webhook": fast.url}).json()
            wait_until(lambda quick=quick: _done(quick), 60, "a quick request")
            done_at = time.monotonic()
            wait_until(lambda n=n: len(fast.arrivals) > n, 30, "its webhook")
            delays.append(max(0.0, fast.arrivals[n] - done_at))
        for sub in hooked:
            wait_until(lambda sub=sub: any("giving up" in e["message"] for e in
                                           httpx.get(sub["status_url"], params={"logs": 1}, headers=AUTH).json()["logs"]),
                       60, "the slow webhooks to be given up")
        print(f"8. slow webhooks (4 trickling receivers, deadline 3 s): first attempts all ended within "
              f"{attempt_s:.1f} s; another user's webhook arrived {max(delays):.2f} s (max of 3) after its request "
              f"completed; slow receivers' attempts: {[t.calls for t in tricklers]}; "
              + audit(JobStore(stack.redis), [s["request_id"] for s in hooked]))
    finally:
        stack.stop()
        fast.close()
        for t in tricklers:
            t.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        only = sys.argv[1:]
        scenarios = (killed_worker, stalled_worker, redis_crash, serve_faults, hostile_input, disk_full, slow_download,
                     slow_webhook)
        for scenario in [s for s in scenarios if not only or s.__name__ in only]:
            scenario(Path(tmp))
