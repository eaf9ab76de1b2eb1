"""Hardening against hostile inputs, slow peers and faults (issue 27): each case with real processes.

A request that kills its worker (a poison request) ends typed after two deaths instead of taking the fleet
down; a download is cancelled while a server trickles its headers; slow webhook receivers delay only their
own webhooks; a webhook redirect is permanent.
"""

from __future__ import annotations

import os
import shutil
import socket
import time

import httpx
import pytest

from tests.conftest import ALICE
from lipsync.testing.media import data_uri_body
from lipsync.testing.slow_peers import Receiver, Trickler, fill, mount_small_disk, unmount
from lipsync.testing.stack import make_stack, spawn, wait_until

AUTH = {"Authorization": f"Key {ALICE}"}


def _status(sub: dict) -> dict:
    return httpx.get(sub["status_url"], params={"logs": 1}, headers=AUTH).json()


def test_a_request_that_kills_its_worker_twice_ends_poison_request(tmp_path, media):
    stack = make_stack(tmp_path / "poison")
    try:
        stack.start_api()
        workers = [stack.start_worker(f"poison-w{i}") for i in range(3)]
        body = data_uri_body(media["video"], media["audio"], use_custom_prompt=True, custom_prompt="test:die",
                             num_frames=2)
        sub = httpx.post(f"{stack.base_url}/pipio/lipsync", json=body, headers=AUTH).json()
        final = wait_until(lambda: (s := _status(sub))["status"] == "COMPLETED" and s, 60, "the request to end")
        assert final["error_type"] == "poison_request", final
        assert sum(not w.alive() for w in workers) == 2  # the third worker never took it
        result = httpx.get(sub["response_url"], headers=AUTH)
        assert result.json()["error_type"] == "poison_request"
        ok = httpx.post(f"{stack.base_url}/pipio/lipsync", headers=AUTH,
                        json=data_uri_body(media["video"], media["audio"], num_frames=2)).json()
        done = wait_until(lambda: (s := _status(ok))["status"] == "COMPLETED" and s, 60, "the next request")
        assert "error" not in done, done
    finally:
        stack.stop()


def _submit(stack, body: dict, **params) -> dict:
    response = httpx.post(f"{stack.base_url}/pipio/lipsync", json=body, params=params, headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def _logs(sub: dict) -> list[str]:
    return [e["message"] for e in _status(sub)["logs"]]


def test_cancel_is_honoured_while_a_server_trickles_the_download(tmp_path, media):
    trickler = Trickler()
    stack = make_stack(tmp_path / "dl", allow_private_urls="true", download_timeout_s="120")
    try:
        stack.start_api()
        stack.start_worker("dl-w1")
        body = data_uri_body(media["video"], media["audio"], num_frames=2)
        body["video"] = trickler.url
        sub = _submit(stack, body)
        wait_until(lambda: trickler.calls == 1, 30, "the download to start")
        started = time.monotonic()
        assert httpx.put(sub["cancel_url"], headers=AUTH).status_code == 202
        final = wait_until(lambda: (s := _status(sub))["status"] == "COMPLETED" and s, 10, "the cancel")
        assert final["error_type"] == "client_cancelled", final
        assert time.monotonic() - started < 3
        wait_until(lambda: trickler.open == 0, 5, "the connection to be closed")
    finally:
        stack.stop()
        trickler.close()


def test_slow_webhook_receivers_delay_only_their_own_webhooks(tmp_path, media):
    tricklers = [Trickler() for _ in range(4)]
    fast = Receiver()
    stack = make_stack(tmp_path / "hooks", allow_private_urls="true", webhook_timeout_s="2",
                       webhook_max_attempts="3", webhook_backoff_s="0.2")
    try:
        stack.start_api()
        stack.start_worker("hooks-w1")
        body = data_uri_body(media["video"], media["audio"], num_frames=2)
        slow = [_submit(stack, body, fal_webhook=t.url) for t in tricklers]
        wait_until(lambda: all(t.calls >= 1 for t in tricklers), 30, "the slow webhooks' first attempts")
        # Each attempt ends at its 2 s deadline however the receiver trickles.
        wait_until(lambda: all(any("attempt 1 failed" in m for m in _logs(s)) for s in slow), 10, "first attempts")
        assert all("took longer than 2 s" in next(m for m in _logs(s) if "attempt 1 failed" in m) for s in slow)
        # The slow destinations now share one thread: another user's webhook goes at once.
        quick = _submit(stack, body, fal_webhook=fast.url)
        done = wait_until(lambda: (s := _status(quick))["status"] == "COMPLETED" and s, 30, "the quick request")
        completed = time.monotonic()
        wait_until(lambda: fast.arrivals, 10, "the quick webhook")
        assert fast.arrivals[0] - completed < 2.0, fast.arrivals[0] - completed
        assert "error" not in done
        wait_until(lambda: all(any("giving up" in m for m in _logs(s)) for s in slow), 40, "the slow ones to give up")
        assert all(t.calls == 3 for t in tricklers)
    finally:
        stack.stop()
        fast.close()
        for t in tricklers:
            t.close()


def test_a_webhook_redirect_is_permanent(tmp_path, media):
    redirecting = Receiver(code=302)
    stack = make_stack(tmp_path / "redirect", allow_private_urls="true", webhook_backoff_s="0.2")
    try:
        stack.start_api()
        stack.start_worker("redirect-w1")
        sub = _submit(stack, data_uri_body(media["video"], media["audio"], num_frames=2), fal_webhook=redirecting.url)
        wait_until(lambda: any("not retried" in m for m in _logs(sub)), 30, "the redirect to be refused")
        time.sleep(1.0)
        assert len(redirecting.arrivals) == 1
        assert any("HTTP 302" in m and "not retried" in m for m in _logs(sub))
    finally:
        stack.stop()
        redirecting.close()


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs inside the test's folder (root only): a disk that can really fill up, harming nothing."""
    mount = tmp_path / "small-disk"
    if not mount_small_disk(mount):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield mount
    finally:
        unmount(mount)


def _typed_storage_refusal(response: httpx.Response, disk) -> None:
    assert response.status_code == 507, (response.status_code, response.text)
    assert response.json()["error_type"] == "storage_full" and response.headers["Retry-After"]
    assert str(disk) not in response.text and "/" not in response.json()["detail"]


def test_a_full_storage_disk_gives_typed_errors_and_the_service_recovers(tmp_path, media, small_disk):
    stack = make_stack(tmp_path / "full", storage_dir=str(small_disk / "storage"))
    try:
        stack.start_api()
        stack.start_worker("full-w1")
        base = stack.base_url
        video = httpx.post(f"{base}/files/upload", headers=AUTH | {"Content-Type": "video/mp4"},
                           content=media["video"].read_bytes()).json()["access_url"]
        audio = httpx.post(f"{base}/files/upload", headers=AUTH | {"Content-Type": "audio/wav"},
                           content=media["audio"].read_bytes()).json()["access_url"]
        filler = fill(small_disk)

        body = data_uri_body(media["video"], media["audio"], num_frames=2)
        _typed_storage_refusal(httpx.post(f"{base}/pipio/lipsync", json=body, headers=AUTH), small_disk)
        _typed_storage_refusal(httpx.post(f"{base}/files/upload", headers=AUTH, content=b"x" * 100_000), small_disk)
        put = httpx.post(f"{base}/storage/upload/initiate", headers=AUTH,
                         json={"file_name": "a.mp4", "content_type": "video/mp4"}).json()["upload_url"]
        _typed_storage_refusal(httpx.put(put, content=b"x" * 100_000), small_disk)
        multipart = httpx.post(f"{base}/files/upload/multipart", headers=AUTH | {"x-fal-file-name": "a.mp4"})
        assert multipart.status_code in (200, 507), multipart.text  # a session may still fit; its parts cannot

        # The worker's result write fails: a typed error without a server path, and the worker lives on.
        sub = _submit(stack, {"video": video, "audio": audio, "num_frames": 12})
        final = wait_until(lambda: (s := _status(sub))["status"] == "COMPLETED" and s, 60, "the request to end")
        assert final["error_type"] == "storage_full", final
        result = httpx.get(sub["response_url"], headers=AUTH)
        assert result.status_code == 507 and str(small_disk) not in result.text and "/tmp" not in result.text

        os.unlink(filler)  # space returns: everything works again, no restart
        ok = _submit(stack, data_uri_body(media["video"], media["audio"], num_frames=2))
        done = wait_until(lambda: (s := _status(ok))["status"] == "COMPLETED" and s, 60, "recovery")
        assert "error" not in done, done
        assert httpx.post(f"{base}/files/upload", headers=AUTH, content=b"x" * 1000).status_code == 200
        assert stack.api.alive() and stack.workers[0].alive()
    finally:
        stack.stop()
        shutil.rmtree(small_disk / "storage", ignore_errors=True)


@pytest.mark.parametrize("field,value", [("custom_prompt", "\\ud800"), ("custom_prompt", "ok \\udfff end"),
                                         ("video", "https://example.com/\\ud83d.mp4")])
def test_a_lone_surrogate_is_422_naming_the_field(stack, field, value):
    body = {"video": "https://example.com/v.mp4", "audio": "https://example.com/a.wav", "use_custom_prompt": True}
    raw = '{"%s": "%s", %s}' % (field, value, ", ".join(f'"{k}": {__import__("json").dumps(v)}'
                                                        for k, v in body.items() if k != field))
    response = httpx.post(f"{stack.base_url}/pipio/lipsync", content=raw, headers=AUTH | {"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", field]
    fine = httpx.post(f"{stack.base_url}/pipio/lipsync", headers=AUTH,
                      json=body | {"custom_prompt": "caf\u00e9 \U0001F600", "num_frames": 2})
    assert fine.status_code == 200, fine.text


# IANA's special-purpose address registries (iana-ipv4-special-registry, iana-ipv6-special-registry): one
# address of every block whose "Globally Reachable" is False or N/A, deprecated ones included.
IANA_NOT_GLOBAL = [
    "0.0.0.1", "10.0.0.1", "100.64.0.1", "127.0.0.2", "169.254.1.1", "172.16.0.1", "192.0.0.1", "192.0.0.170",
    "192.0.2.1", "192.88.99.1", "192.168.0.1", "198.18.0.1",
    "198.51.100.1", "203.0.113.1", "240.0.0.1", "255.255.255.255",
    "::1", "::", "64:ff9b:1::1", "100::1", "2001::1", "2001:2::1", "2001:10::1", "2001:db8::1",
    "fc00::1", "fe80::1", "fec0::1", "5f00::1",
]


@pytest.mark.parametrize("address", IANA_NOT_GLOBAL)
def test_the_ssrf_guard_refuses_every_special_purpose_block(address):
    from lipsync.worker.safe_http import is_public

    assert not is_public(address)


def test_the_ssrf_guard_keeps_public_addresses_public():
    from lipsync.worker.safe_http import is_public

    for address in ("8.8.8.8", "1.1.1.1", "192.0.0.9", "2606:4700::1111", "2a00:1450:4001::1", "::ffff:8.8.8.8"):
        assert is_public(address), address


def test_multipart_size_holds_as_parts_arrive_and_abandoned_sessions_are_swept(tmp_path):
    stack = make_stack(tmp_path / "parts", max_input_bytes=str(1 << 20), upload_ttl_s="2", retention_interval_s="0.5")
    try:
        base = stack.start_api()
        started = httpx.post(f"{base}/files/upload/multipart", headers=AUTH | {"x-fal-file-name": "a.bin"}).json()
        part_url = f"{started['access_url']}/multipart/{started['uploadId']}"
        session = tmp_path / "parts" / "storage" / ".parts" / started["uploadId"]
        assert httpx.put(f"{part_url}/1", headers=AUTH, content=b"a" * 600_000).status_code == 200
        second = httpx.put(f"{part_url}/2", headers=AUTH, content=b"b" * 600_000)  # 1.2 MB > 1 MiB in total
        assert second.status_code == 413 and second.json()["error_type"] == "payload_too_large"
        assert httpx.put(f"{part_url}/3", headers=AUTH, content=b"c" * (2 << 20)).status_code == 413
        assert sorted(p.name for p in session.iterdir() if "part" in p.name) == ["part-00001"]  # nothing else kept
        assert httpx.put(f"{part_url}/2", headers=AUTH, content=b"b" * 400_000).status_code == 200  # what fits
        wait_until(lambda: not session.exists(), 10, "the abandoned session to be swept")
        gone = httpx.put(f"{part_url}/4", headers=AUTH, content=b"d")
        assert gone.status_code == 404
    finally:
        stack.stop()


def _pings(r) -> bool:
    try:
        return bool(r.ping())
    except Exception:
        return False


def test_redis_refusing_writes_is_ridden_out_like_an_outage(tmp_path, media, small_disk):
    stack = make_stack(tmp_path / "misconf")
    port = int(stack.redis_url.rsplit(":", 1)[1].split("/")[0])
    stack.redis_proc.kill()  # the same redis-server, allowed to move its save folder (a protected setting)
    stack.redis_proc = spawn("redis-misconf", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir",
                                               str(tmp_path), "--save", "", "--enable-protected-configs", "yes"],
                             dict(os.environ), tmp_path)
    wait_until(lambda: _pings(stack.redis), 10, "redis-server")
    try:
        base = stack.start_api()
        worker = stack.start_worker("misconf-w1")
        r = stack.redis
        home = r.config_get("dir")["dir"]
        fill(small_disk)
        running = _submit(stack, data_uri_body(media["video"], media["audio"], use_custom_prompt=True,
                                               custom_prompt="test:slow=0.3", num_frames=12))
        wait_until(lambda: _status(running)["status"] == "IN_PROGRESS", 30, "a job to be running")
        # An RDB save that fails for want of space: Redis then refuses every write (MISCONF) until one succeeds.
        r.config_set("save", "3600 1")
        r.config_set("dir", str(small_disk))
        r.bgsave()
        wait_until(lambda: r.info("persistence")["rdb_last_bgsave_status"] == "err", 10, "the failed save")
        refused = httpx.post(f"{base}/pipio/lipsync", json=data_uri_body(media["video"], media["audio"], num_frames=2),
                             headers=AUTH)
        assert refused.status_code == 503 and refused.headers["Retry-After"], refused.text
        time.sleep(6)  # the job ends, heartbeats, dequeues and housekeeping all hit the refusal meanwhile
        assert worker.alive(), worker.log()[-3000:]
        r.config_set("dir", home)
        r.bgsave()
        wait_until(lambda: r.info("persistence")["rdb_last_bgsave_status"] == "ok", 10, "a good save")
        sub = _submit(stack, data_uri_body(media["video"], media["audio"], num_frames=2))
        done = wait_until(lambda: (s := _status(sub))["status"] == "COMPLETED" and s, 30, "the worker to resume")
        assert "error" not in done and worker.alive()
        finished = wait_until(lambda: (s := _status(running))["status"] == "COMPLETED" and s, 30, "the running one")
        assert "error" not in finished, finished
        log = worker.log()
        assert log.count("Traceback") == 0, log[-3000:]
        # Failures that repeat every tick say so once a minute, not every 0.5 s.
        for line in ("liveness beat failed", "housekeeping skipped a round", "webhook dispatcher"):
            assert log.count(line) <= 1, (line, log[-3000:])
    finally:
        stack.stop()


def test_a_stalled_body_is_408_and_a_vanished_client_is_one_log_line(tmp_path):
    stack = make_stack(tmp_path / "body", body_idle_timeout_s="1")
    try:
        base = stack.start_api()
        port = int(base.rsplit(":", 1)[1])
        head = (f"POST /files/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Key {ALICE}\r\n"
                "Content-Type: video/mp4\r\nContent-Length: 100000\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled:
            stalled.sendall(head + b"x" * 10)
            started = time.monotonic()
            reply = stalled.recv(65536).decode()
            assert reply.startswith("HTTP/1.1 408"), reply
            assert "body_timeout" in reply and time.monotonic() - started < 4
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as gone:
                gone.sendall(head + b"x" * 1000)
        wait_until(lambda: stack.api.log().count("client disconnected during POST /files/upload") == 3, 10,
                   "the disconnects to be logged")
        assert "Traceback" not in stack.api.log() and "unhandled error" not in stack.api.log()
        assert httpx.get(f"{base}/healthz").status_code == 200
    finally:
        stack.stop()


def test_an_idle_worker_stops_promptly_on_sigterm(tmp_path, media):
    # RQ joined its pubsub thread with no timeout at stop, and that thread could sit out a 60 s poll: about
    # one SIGTERM in three took 30-60 s (serve's stop then waited for it). Every stop now takes ~1 s at most.
    import random
    import signal

    stack = make_stack(tmp_path / "stop")
    try:
        stack.start_api()
        took = []
        for i in range(8):
            worker = stack.start_worker(f"stop-w{i}")
            if i % 2:
                sub = _submit(stack, data_uri_body(media["video"], media["audio"], num_frames=2))
                wait_until(lambda sub=sub: _status(sub)["status"] == "COMPLETED", 30, "a job first")
            time.sleep(random.uniform(0, 1.5))
            started = time.monotonic()
            worker.popen.send_signal(signal.SIGTERM)
            try:
                worker.popen.wait(10)
            finally:
                took.append(time.monotonic() - started)
        assert max(took) < 3, took
    finally:
        stack.stop()
