"""Faults: Redis restarting under load, storage that cannot be written, webhook receivers that hang."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from tests.conftest import ALICE, _stack
from tests.test_js_client import JS_DIR, requires_js
from lipsync.testing.media import data_uri_body
from lipsync.testing.stack import make_stack, wait_until

AUTH = {"Authorization": f"Key {ALICE}"}


def _body(media, **extra) -> dict:
    return data_uri_body(media["video"], media["audio"], **extra)


def _status(stack, submitted: dict) -> dict:
    return httpx.get(submitted["status_url"], headers=AUTH, timeout=10).json()


def test_queued_requests_survive_a_redis_crash_with_aof(tmp_path_factory, media):
    stack = make_stack(tmp_path_factory.mktemp("aof"), appendonly=True)
    try:
        stack.start_api()
        submitted = [
            httpx.post(f"{stack.base_url}/pipio/lipsync", json=_body(media, num_frames=3), headers=AUTH).json()
            for _ in range(5)
        ]
        time.sleep(1.5)  # AOF's default fsync is every second: what is older than that is on disk
        stack.restart_redis(signal.SIGKILL)
        assert all(_status(stack, s)["status"] == "IN_QUEUE" for s in submitted)
        stack.start_worker("aof-w1")
        for s in submitted:
            status = wait_until(lambda s=s: (st := _status(stack, s))["status"] == "COMPLETED" and st, 60, "completion")
            assert "error" not in status
    finally:
        stack.stop()


def test_worker_and_api_ride_out_a_redis_restart(tmp_path_factory, media):
    stack = make_stack(tmp_path_factory.mktemp("restart"), appendonly=True)
    try:
        stack.start_api()
        stack.start_worker("restart-w1")
        first = httpx.post(f"{stack.base_url}/pipio/lipsync", json=_body(media, num_frames=2), headers=AUTH).json()
        wait_until(lambda: _status(stack, first)["status"] == "COMPLETED", 30, "the first request")
        time.sleep(1.2)
        stack.restart_redis(signal.SIGTERM)  # a clean restart: everything written is kept
        after = wait_until(
            lambda: (r := httpx.post(f"{stack.base_url}/pipio/lipsync", json=_body(media, num_frames=2),
                                     headers=AUTH)).status_code == 200 and r.json(),
            30, "the API to reconnect",
        )
        status = wait_until(lambda: (st := _status(stack, after))["status"] == "COMPLETED" and st, 60, "the worker")
        assert "error" not in status and stack.workers[0].alive()
        assert _status(stack, first)["status"] == "COMPLETED"  # finished requests survived the restart
    finally:
        stack.stop()


def test_unwritable_storage_fails_the_request_and_the_worker_keeps_serving(stack, media):
    results = stack.workdir / "storage" / "objects" / "results"
    results.mkdir(parents=True, exist_ok=True)
    backup = results.with_name("results.bak")
    results.rename(backup)
    results.write_text("not a folder: every write under it fails")
    try:
        submitted = httpx.post(f"{stack.base_url}/pipio/lipsync", json=_body(media, num_frames=2), headers=AUTH).json()
        status = wait_until(lambda: (st := _status(stack, submitted))["status"] == "COMPLETED" and st, 30, "failure")
        assert status["error_type"] == "storage_error"
    finally:
        results.unlink()
        backup.rename(results)
    again = httpx.post(f"{stack.base_url}/pipio/lipsync", json=_body(media, num_frames=2), headers=AUTH).json()
    status = wait_until(lambda: (st := _status(stack, again))["status"] == "COMPLETED" and st, 30, "recovery")
    assert "error" not in status and stack.workers[0].alive()


class HangingReceiver:
    def __init__(self):
        self.calls = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                receiver.calls += 1
                time.sleep(30)  # never answers in time

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_hanging_webhook_receiver_is_bounded_and_does_not_block_jobs(tmp_path_factory, media):
    gen = _stack(tmp_path_factory, "hang", allow_private_urls="true", webhook_timeout_s="1",
                 webhook_max_attempts="2", webhook_backoff_s="0.2")
    stack = next(gen)
    try:
        receiver = HangingReceiver()
        hooked = httpx.post(f"{stack.base_url}/pipio/lipsync", json=_body(media, num_frames=2),
                            params={"fal_webhook": receiver.url}, headers=AUTH).json()
        wait_until(lambda: receiver.calls >= 1, 20, "the first webhook attempt")
        started = time.monotonic()
        quick = httpx.post(f"{stack.base_url}/pipio/lipsync", json=_body(media, num_frames=2), headers=AUTH).json()
        wait_until(lambda: _status(stack, quick)["status"] == "COMPLETED", 20, "a job while the webhook hangs")
        assert time.monotonic() - started < 5
        logs = lambda: [e["message"] for e in httpx.get(hooked["status_url"], params={"logs": 1}, headers=AUTH).json()["logs"]]
        wait_until(lambda: any("giving up" in m for m in logs()), 30, "the webhook to be given up")
        assert receiver.calls == 2
    finally:
        for _ in gen:
            pass


def test_python_client_rides_out_an_api_crash(tmp_path_factory, media):
    """The API dies mid-request and comes back: the client's retries carry it; the request is not lost."""
    import fal_client

    from lipsync.client import point_fal_client

    gen = _stack(tmp_path_factory, "apicrash")
    stack = next(gen)
    try:
        point_fal_client(stack.base_url)
        client = fal_client.SyncClient(key=ALICE)
        args = {"video": fal_client.encode_file(media["video"]), "audio": fal_client.encode_file(media["audio"]),
                "use_custom_prompt": True, "custom_prompt": "test:slow=0.25", "num_frames": 12}
        handle = client.submit("pipio/lipsync", args)
        wait_until(lambda: isinstance(handle.status(), fal_client.InProgress), 20, "the job to start")
        crash = threading.Timer(0.5, stack.restart_api)
        crash.start()
        result = handle.get()  # polls through the outage
        crash.join()
        assert result["video"]["file_size"] > 0
        assert stack.api.alive()
    finally:
        for _ in gen:
            pass


@requires_js
def test_js_client_rides_out_an_api_crash(tmp_path_factory, media):
    """Same with the JS client in its default polling mode (it retries failed status polls)."""
    gen = _stack(tmp_path_factory, "jscrash")
    stack = next(gen)
    try:
        env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "BASE": stack.base_url, "FAL_KEY": ALICE,
               "VIDEO": str(media["video"]), "AUDIO": str(media["audio"])}
        node = subprocess.Popen(["node", "client_e2e.mjs", "slow"], cwd=JS_DIR, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        wait_until(lambda: stack.redis.zcard("lipsync:running") == 1, 30, "the job to start")
        stack.restart_api()
        out, err = node.communicate(timeout=120)
        assert node.returncode == 0, err + stack.logs()
        result = json.loads(out.strip().splitlines()[-1])
        assert result["data"]["video"]["file_size"] > 0 and len(result["requestId"]) == 36
    finally:
        for _ in gen:
            pass
