"""Issue 10's reproductions: costs bounded at submit, hostile JSON, the SSRF guard's IPv6 forms, webhook
refusals, CORS, priority, lifecycle preferences, timeout types and headers on served files.

Each test sends what a user or an attacker sent against the real stack (real Redis, API over loopback,
worker with the fast test pipeline).
"""

from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import ALICE, _stack
from lipsync.testing.media import data_uri_body
from lipsync.testing.stack import Stack, make_stack, start_redis, wait_until
from lipsync.worker.safe_http import DownloadError, SafeHttp, is_public

AUTH = {"Authorization": f"Key {ALICE}"}
V, A = "https://example.com/face.mp4", "https://example.com/speech.wav"


def _submit(stack: Stack, body, headers: dict | None = None, **params) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/pipio/lipsync", json=body, params=params, headers=AUTH | (headers or {}))


def _status(sub: dict) -> dict:
    return httpx.get(sub["status_url"], params={"logs": 1}, headers=AUTH).json()


def _completed(sub: dict, timeout: float = 60) -> dict:
    return wait_until(lambda: (s := _status(sub))["status"] == "COMPLETED" and s, timeout, "completion")


# --- item 4 and 6: every cost bounded, every cross-field rule checked, before queueing ---------------------

COSTLY = [
    ("addition-1e9", {"num_frames": 10, "edit_addition_start_frames": [1], "edit_addition_durations": [10**9]},
     "edit_addition_durations"),
    ("addition-past-max-frames", {"num_frames": 10, "edit_addition_start_frames": [1], "edit_addition_durations": [20000]},
     "edit_addition_durations"),
    ("bridge-1e9", {"num_frames": 10, "edit_removal_ranges": [2, 3], "edit_removal_bridge_durations": [10**9]},
     "edit_removal_bridge_durations"),
    ("height-8192", {"height": 8192}, "height"),
    ("width-8192", {"width": 8192}, "width"),
    ("height-minus-1e9", {"height": -1_000_000_000}, "height"),
    ("ff-splits-1e18", {"feed_forward_num_splits": 10**18}, "feed_forward_num_splits"),
    ("vae-chunk-huge", {"vae_chunk_size": 8 * 10**9 + 1}, "vae_chunk_size"),
    ("frame-block-huge", {"frame_block_width": 10**12}, "frame_block_width"),
    ("duplicate-addition-starts", {"edit_addition_start_frames": [3, 3], "edit_addition_durations": [1, 1]},
     "edit_addition_start_frames"),
    ("addition-inside-removal", {"edit_addition_start_frames": [5], "edit_addition_durations": [2],
                                 "edit_removal_ranges": [4, 6], "edit_removal_bridge_durations": [0]},
     "edit_addition_start_frames"),
    ("removal-of-every-frame", {"num_frames": 10, "edit_removal_ranges": [0, 9], "edit_removal_bridge_durations": [0]},
     "edit_removal_ranges"),
    ("edit-list-too-long", {"edit_addition_start_frames": list(range(20_001)), "edit_addition_durations": [1] * 20_001},
     "edit_addition_start_frames"),
]


@pytest.mark.parametrize("fields,field", [c[1:] for c in COSTLY], ids=[c[0] for c in COSTLY])
def test_costly_or_impossible_request_is_422_at_submit(stack, fields, field):
    queued = stack.redis.llen("rq:queue:lipsync")
    response = _submit(stack, {"video": V, "audio": A} | fields)
    assert response.status_code == 422, response.text
    assert ["body", field] in [d["loc"][:2] for d in response.json()["detail"]], response.text
    assert stack.redis.llen("rq:queue:lipsync") == queued


def test_output_length_at_the_bound_is_accepted(stack):
    # 100 - 2 removed + 9900 added + 2 bridged = 10 000 = max_num_frames
    body = {"video": V, "audio": A, "edit_addition_start_frames": [0], "edit_addition_durations": [9900],
            "edit_removal_ranges": [50, 51], "edit_removal_bridge_durations": [2]}
    response = _submit(stack, body)
    assert response.status_code == 200, response.text
    httpx.put(response.json()["cancel_url"], headers=AUTH)


# --- item 5: hostile JSON is a 4xx and the kept-alive connection serves the next request -----------------

HOSTILE_JSON = [
    ("deep-nesting", b'{"video": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("int-over-4300-digits", b'{"video": "https://example.com/a.mp4", "audio": "https://example.com/a.wav", "seed": '
     + b"9" * 5000 + b"}"),
    ("nan", b'{"video": "https://example.com/a.mp4", "audio": "https://example.com/a.wav", "seed": NaN}'),
    ("infinity", b'{"video": "https://example.com/a.mp4", "audio": "https://example.com/a.wav", "seed": -Infinity}'),
    ("1e400", b'{"video": "https://example.com/a.mp4", "audio": "https://example.com/a.wav", "num_frames": 1e400}'),
]


def test_hostile_json_is_422_and_the_connection_lives_on(stack):
    host, port = urlsplit(stack.base_url).hostname, urlsplit(stack.base_url).port
    conn = http.client.HTTPConnection(host, port, timeout=10)
    headers = {"Authorization": f"Key {ALICE}", "Content-Type": "application/json"}
    try:
        conn.connect()
        sock = conn.sock
        for name, raw in HOSTILE_JSON:
            conn.request("POST", "/pipio/lipsync", body=raw, headers=headers)
            response = conn.getresponse()
            body = json.loads(response.read())
            assert response.status in (400, 422), (name, response.status, body)
            assert body["detail"][0]["loc"][0] == "body", (name, body)
            assert conn.sock is sock, f"{name}: the server closed the kept-alive connection"
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read()) == {"status": "ok"}
        assert conn.sock is sock
    finally:
        conn.close()


# --- item 7: the SSRF guard's IPv6 forms; webhook URLs; permanent refusals --------------------------------

EMBEDDING_IPV6 = ["::127.0.0.1", "::ffff:0:7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::a9fe:a9fe", "2002:a9fe:a9fe::1",
                  "2002:7f00:1::1", "::ffff:169.254.169.254", "2001:0:4136:e378:8000:63bf:80ff:fffe"]


@pytest.mark.parametrize("address", EMBEDDING_IPV6)
def test_ipv6_forms_embedding_a_private_ipv4_are_refused(address, tmp_path):
    assert not is_public(address)
    with pytest.raises(DownloadError, match="refused") as info:
        SafeHttp(allow_private=False, timeout_s=3).download(f"http://[{address}]:9/x", tmp_path / "f", max_bytes=10)
    assert info.value.permanent


def test_ipv6_forms_embedding_a_public_ipv4_stay_public():
    assert is_public("64:ff9b::808:808") and is_public("2002:808:808::1")


@pytest.mark.parametrize("hook", ["http://", "https://", "http:///path", "http://:80/x"])
def test_webhook_without_host_is_refused(stack, hook):
    response = _submit(stack, {"video": V, "audio": A}, fal_webhook=hook)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "fal_webhook"]


def test_refused_webhook_is_not_retried(stack, media):
    sub = _submit(stack, data_uri_body(media["video"], media["audio"], num_frames=2),
                  fal_webhook="http://[::127.0.0.1]:9/hook").json()
    _completed(sub)
    wait_until(lambda: any("not retried" in e["message"] for e in _status(sub)["logs"]), 10, "the refusal")
    time.sleep(1.0)
    record = stack.redis.hgetall(f"lipsync:req:{sub['request_id']}")
    assert int(record.get(b"webhook_attempts", 0)) == 0  # never scheduled again
    assert stack.redis.zscore("lipsync:webhooks:due", sub["request_id"]) is None


# --- items 9 and 10: CORS, priority, lifecycle, timeout types, served-file headers ------------------------

ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def idle_stack(tmp_path_factory):
    """A stack whose worker starts only when a test asks (``start_worker``), with CORS on."""
    stack = make_stack(
        tmp_path_factory.mktemp("idle"), cors_origins=f"{ORIGIN},https://other.example.com"
    )
    try:
        stack.start_api()
        yield stack
    finally:
        stack.stop()


def test_cors_covers_api_uploads_and_files(idle_stack, media):
    base = idle_stack.base_url
    preflight = httpx.options(f"{base}/pipio/lipsync", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-fal-queue-priority"})
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "x-fal-queue-priority" in preflight.headers["access-control-allow-headers"].lower()
    init = httpx.post(f"{base}/storage/upload/initiate", json={"file_name": "a.mp4", "content_type": "video/mp4"},
                      headers=AUTH | {"Origin": ORIGIN})
    assert init.headers["access-control-allow-origin"] == ORIGIN
    upload = init.json()
    put_preflight = httpx.options(upload["upload_url"], headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "PUT", "Access-Control-Request-Headers": "content-type"})
    assert put_preflight.status_code == 200 and put_preflight.headers["access-control-allow-origin"] == ORIGIN
    put = httpx.put(upload["upload_url"], content=media["video"].read_bytes(),
                    headers={"Origin": ORIGIN, "Content-Type": "video/mp4"})
    assert put.status_code == 200 and put.headers["access-control-allow-origin"] == ORIGIN
    got = httpx.get(upload["file_url"], headers={"Origin": ORIGIN})
    assert got.status_code == 200 and got.headers["access-control-allow-origin"] == ORIGIN
    assert got.headers["x-content-type-options"] == "nosniff"
    submit = _submit(idle_stack, {"video": V, "audio": A}, headers={"Origin": ORIGIN})
    assert "x-fal-request-id" in submit.headers["access-control-expose-headers"].lower()
    httpx.put(submit.json()["cancel_url"], headers=AUTH)
    stranger = httpx.options(f"{base}/pipio/lipsync", headers={
        "Origin": "https://evil.example.net", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in stranger.headers


def test_cors_is_off_by_default(stack):
    preflight = httpx.options(f"{stack.base_url}/pipio/lipsync", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


def test_queue_timeout_types_user_and_server(tmp_path):
    # No worker: the caller's X-Fal-Request-Timeout runs out (user), or the server's queued_ttl_s (server).
    stack = make_stack(tmp_path / "timeouts", queued_ttl_s="3")
    try:
        stack.start_api()
        user = _submit(stack, {"video": V, "audio": A}, headers={"X-Fal-Request-Timeout": "1.5"}).json()
        server = _submit(stack, {"video": V, "audio": A}).json()
        for sub, kind in ((user, "user"), (server, "server")):
            _completed(sub, timeout=20)
            result = httpx.get(sub["response_url"], headers=AUTH)
            assert result.status_code == 504 and result.headers["x-fal-request-timeout-type"] == kind
        assert stack.redis.llen("rq:queue:lipsync") == 0  # timed-out requests leave the RQ queue too
    finally:
        stack.stop()


def test_low_priority_waits_behind_normal_and_positions_say_so(idle_stack, media):
    body = data_uri_body(media["video"], media["audio"], num_frames=2)
    headers_low = {"x-fal-queue-priority": "low", "X-Fal-Request-Timeout": "120"}
    lows = [_submit(idle_stack, body, headers=headers_low).json() for _ in range(2)]
    normals = [_submit(idle_stack, body, headers={"x-fal-queue-priority": "normal", "X-Fal-Request-Timeout": "120"}).json()
               for _ in range(2)]
    assert [_status(s)["queue_position"] for s in normals + lows] == [0, 1, 2, 3]
    bad = _submit(idle_stack, body, headers={"x-fal-queue-priority": "urgent"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["header", "x-fal-queue-priority"]
    idle_stack.start_worker("prio-w1")
    for sub in normals + lows:
        assert "error" not in _completed(sub)
    done = [float(idle_stack.redis.hget(f"lipsync:req:{s['request_id']}", "started_at")) for s in normals + lows]
    assert max(done[:2]) < min(done[2:]), done


def test_lifecycle_preference_bounds_result_url_and_retention(idle_stack, media):
    if not idle_stack.workers:
        idle_stack.start_worker("life-w1")
    body = data_uri_body(media["video"], media["audio"], num_frames=2)
    pref = {"X-Fal-Object-Lifecycle-Preference": json.dumps({"expiration_duration_seconds": 120})}
    sub = _submit(idle_stack, body, headers=pref).json()
    _completed(sub)
    url = httpx.get(sub["response_url"], headers=AUTH).json()["video"]["url"]
    expires = int(urlsplit(url).path.split("/files/", 1)[1].split("/", 1)[0])
    assert 100 <= expires - time.time() <= 121
    completed = float(idle_stack.redis.hget(f"lipsync:req:{sub['request_id']}", "completed_at"))
    assert idle_stack.redis.zscore("lipsync:retention", sub["request_id"]) == pytest.approx(completed + 120, abs=1)
    # Asking for more than the server keeps gets the server's bound; too little gets the minimum (60 s).
    tiny = {"X-Fal-Object-Lifecycle": json.dumps({"expiration_duration_seconds": 1})}
    init = httpx.post(f"{idle_stack.base_url}/storage/upload/initiate", json={"file_name": "a.mp4"}, headers=AUTH | tiny)
    expires = int(urlsplit(init.json()["file_url"]).path.split("/files/", 1)[1].split("/", 1)[0])
    assert 55 <= expires - time.time() <= 61
    key = urlsplit(init.json()["file_url"]).path.split("/", 4)[4]
    assert idle_stack.redis.zscore("lipsync:retention", f"upload:{key}") is not None


def test_redis_down_is_503_with_retry_after(tmp_path_factory, media):
    gen = _stack(tmp_path_factory, "redis-down")
    stack = next(gen)
    try:
        port = int(stack.redis_url.rsplit(":", 1)[1].split("/")[0])
        stack.redis_proc.kill()
        response = _submit(stack, {"video": V, "audio": A})
        assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1, response.text
        assert response.json()["error_type"] == "service_unavailable"
        ready = httpx.get(f"{stack.base_url}/readyz")
        assert ready.status_code == 503 and "retry-after" in ready.headers

        stack.redis_proc, _ = start_redis(stack.workdir / "redis", port=port)
        sub = wait_until(lambda: (r := _submit(stack, data_uri_body(media["video"], media["audio"], num_frames=2)))
                         .status_code == 200 and r.json(), 30, "the API back")
        try:
            final = _completed(sub, timeout=30)
        except TimeoutError:
            raise AssertionError(stack.logs()) from None
        assert "error" not in final
    finally:
        with pytest.raises(StopIteration):
            next(gen)


# --- item 4: audio decoded with bounded memory -------------------------------------------------------------


def test_192khz_audio_is_decoded_at_48khz_and_bounded_by_max_seconds(tmp_path):
    import av
    import numpy as np

    from lipsync.media.audio import MAX_DECODE_RATE, load_audio

    path, rate, seconds = tmp_path / "hires.flac", 192_000, 4
    with av.open(str(path), "w") as out:
        stream = out.add_stream("flac", rate=rate)
        stream.layout = "stereo"
        t = np.arange(rate * seconds) / rate
        tone = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]).T.reshape(1, -1).copy(), format="s16", layout="stereo")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    track = load_audio(path, max_seconds=1.5)
    assert track.sample_rate == MAX_DECODE_RATE == 48_000
    assert track.samples.shape == (72_000, 2)  # 1.5 s at 48 kHz, not 4 s at 192 kHz
