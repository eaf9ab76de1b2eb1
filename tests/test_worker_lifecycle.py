"""Worker faults and webhooks: a crashed pipeline, a SIGKILLed worker, webhook delivery with retries."""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lipsync.contract.webhook_signing import signed_message

from tests.conftest import ALICE, _stack
from lipsync.testing.media import data_uri_body
from lipsync.testing.stack import Stack, wait_until

AUTH = {"Authorization": f"Key {ALICE}"}


def _body(media, **extra) -> dict:
    return data_uri_body(media["video"], media["audio"], **extra)


def _submit(stack: Stack, body: dict, **params) -> dict:
    response = httpx.post(f"{stack.base_url}/pipio/lipsync", json=body, params=params, headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def _status(submitted: dict, logs: bool = True) -> dict:
    return httpx.get(submitted["status_url"], params={"logs": int(logs)}, headers=AUTH).json()


def _completed(submitted: dict, timeout: float = 60) -> dict:
    return wait_until(lambda: (s := _status(submitted))["status"] == "COMPLETED" and s, timeout, "completion")


def test_crashing_pipeline_fails_the_request_not_the_worker(stack, media):
    crashed = _submit(stack, _body(media, use_custom_prompt=True, custom_prompt="test:crash"))
    status = _completed(crashed)
    assert status["error_type"] == "internal_error" and "crashed on purpose" in status["error"]
    result = httpx.get(crashed["response_url"], headers=AUTH)
    assert result.status_code == 500 and result.headers["x-fal-error-type"] == "internal_error"
    assert result.headers["x-fal-request-id"] == crashed["request_id"]
    # the same worker serves the next request
    fine = _completed(_submit(stack, _body(media, num_frames=3)))
    assert "error" not in fine
    assert stack.workers[0].alive()


def test_start_timeout_header_drops_a_request_that_waited_too_long(stack, media):
    busy = _submit(stack, _body(media, use_custom_prompt=True, custom_prompt="test:slow=0.3", num_frames=12))
    response = httpx.post(f"{stack.base_url}/pipio/lipsync", json=_body(media), headers=AUTH | {"X-Fal-Request-Timeout": "1.5"})
    waiting = response.json()
    status = _completed(waiting, timeout=20)
    assert status["error_type"] == "request_timeout"
    result = httpx.get(waiting["response_url"], headers=AUTH)
    assert result.status_code == 504 and result.headers["x-fal-request-timeout-type"] == "user"
    assert "error" not in _completed(busy)
    bad = httpx.post(f"{stack.base_url}/pipio/lipsync", json=_body(media), headers=AUTH | {"X-Fal-Request-Timeout": "0.5"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["header", "x-fal-request-timeout"]


def test_unpacked_data_uris_are_deleted_when_the_request_ends(stack, media):
    submitted = _submit(stack, _body(media, num_frames=2))
    _completed(submitted)
    wait_until(lambda: not (stack.workdir / "storage" / "objects" / "inputs" / submitted["request_id"]).exists()
               or not any((stack.workdir / "storage" / "objects" / "inputs" / submitted["request_id"]).iterdir()),
               10, "the input copies to go")


def test_sigkilled_worker_fails_its_request_and_a_new_worker_serves(tmp_path_factory, media):
    gen = _stack(tmp_path_factory, "kill")
    stack = next(gen)
    try:
        victim = stack.workers[0]
        # X-Fal-No-Retry: without it the request would be queued again (tests/test_runner_retry.py)
        body = _body(media, use_custom_prompt=True, custom_prompt="test:slow=0.5", num_frames=60)
        response = httpx.post(f"{stack.base_url}/pipio/lipsync", json=body, headers=AUTH | {"X-Fal-No-Retry": "1"})
        slow = response.json()
        wait_until(lambda: _status(slow)["status"] == "IN_PROGRESS", 30, "the job to start")
        victim.kill(signal.SIGKILL)
        status = _completed(slow, timeout=30)  # heartbeat TTL 2 s + reaper period 0.5 s in tests
        assert status["error_type"] == "runner_disconnected"
        assert httpx.get(slow["response_url"], headers=AUTH).status_code == 503

        stack.start_worker("kill-w2")
        after = _completed(_submit(stack, _body(media, num_frames=3)))
        assert "error" not in after
    finally:
        with pytest.raises(StopIteration):
            next(gen)


def _verify_signature(stack: Stack, call: dict, request_id: str) -> None:
    """Check the Ed25519 signature the way a receiver would: with the key from the API's JWKS."""
    headers = call["headers"]
    assert headers["X-Fal-Webhook-Request-Id"] == request_id and headers["X-Fal-Webhook-User-Id"] == "alice"
    assert abs(time.time() - int(headers["X-Fal-Webhook-Timestamp"])) < 300
    jwk = httpx.get(f"{stack.base_url}/.well-known/jwks.json").json()["keys"][0]
    assert (jwk["kty"], jwk["crv"]) == ("OKP", "Ed25519")
    public = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(jwk["x"] + "=="))
    message = signed_message(request_id, "alice", headers["X-Fal-Webhook-Timestamp"], call["raw"])
    public.verify(bytes.fromhex(headers["X-Fal-Webhook-Signature"]), message)  # raises if forged
    with pytest.raises(InvalidSignature):
        public.verify(bytes.fromhex(headers["X-Fal-Webhook-Signature"]), message + b"tampered")


class Receiver:
    """A webhook receiver on 127.0.0.1 that fails its first ``fail_first`` deliveries with HTTP 500."""

    def __init__(self, fail_first: int):
        self.fail_first = fail_first
        self.calls: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append({"body": json.loads(raw), "raw": raw, "headers": dict(self.headers)})
                code = 500 if len(receiver.calls) <= receiver.fail_first else 200
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def webhook_stack(tmp_path_factory) -> Iterator[Stack]:
    # Loopback receivers need the explicit opt-in; the default stack refuses private addresses.
    yield from _stack(tmp_path_factory, "hooks", allow_private_urls="true", webhook_backoff_s="0.2")


def test_webhook_delivered_after_two_failures(webhook_stack, media):
    receiver = Receiver(fail_first=2)
    try:
        submitted = _submit(webhook_stack, _body(media, num_frames=4), fal_webhook=receiver.url)
        wait_until(lambda: len(receiver.calls) >= 3, 30, "three webhook attempts")
        final = receiver.calls[-1]
        assert final["body"]["status"] == "OK" and final["body"]["request_id"] == submitted["request_id"]
        assert final["body"]["payload"]["video"]["url"].startswith(webhook_stack.base_url + "/files/")
        _verify_signature(webhook_stack, final, submitted["request_id"])
        assert httpx.get(final["body"]["payload"]["video"]["url"]).status_code == 200
        logs = [e["message"] for e in _status(submitted)["logs"]]
        assert any("Webhook delivered (attempt 3)" in m for m in logs)
    finally:
        receiver.close()


def test_webhook_for_a_failed_request(webhook_stack, media):
    receiver = Receiver(fail_first=0)
    try:
        bad = _body(media)
        bad["video"] = bad["audio"]  # audio given as video: the test pipeline finds no video stream
        _submit(webhook_stack, bad, fal_webhook=receiver.url)
        wait_until(lambda: receiver.calls, 30, "the webhook")
        body = receiver.calls[0]["body"]
        assert body["status"] == "ERROR" and body["error"].startswith("Invalid status code:")
        assert body["payload"]["detail"]
    finally:
        receiver.close()


def test_default_stack_refuses_loopback_webhooks(stack, media):
    receiver = Receiver(fail_first=0)
    try:
        submitted = _submit(stack, _body(media, num_frames=2), fal_webhook=receiver.url)
        _completed(submitted)
        wait_until(
            lambda: any("Webhook attempt 1 failed: refused" in e["message"] for e in _status(submitted)["logs"]),
            10,
            "the refusal in the logs",
        )
        assert receiver.calls == []
    finally:
        receiver.close()
