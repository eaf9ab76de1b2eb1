"""The SSE status stream, health endpoints, metrics, OpenAPI, and the API's torch-free import."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx

from tests.conftest import ALICE
from lipsync.testing.media import data_uri_body
from lipsync.testing.stack import wait_until

AUTH = {"Authorization": f"Key {ALICE}"}


def _submit(stack, media, **extra) -> dict:
    body = data_uri_body(media["video"], media["audio"], **extra)
    return httpx.post(f"{stack.base_url}/pipio/lipsync", json=body, headers=AUTH).json()


def test_sse_stream_sends_status_events_and_closes_after_completed(stack, media):
    submitted = _submit(stack, media, use_custom_prompt=True, custom_prompt="test:slow=0.1", num_frames=12)
    events = []
    # JS sends both Accept values; the server must not negotiate on them.
    headers = AUTH | {"Accept": "application/json, text/event-stream"}
    with httpx.stream("GET", submitted["status_url"] + "/stream", params={"logs": 1}, headers=headers, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    # the server closed the stream itself, right after COMPLETED
    assert events[-1]["status"] == "COMPLETED" and "error" not in events[-1]
    assert [e["status"] for e in events if e["status"] == "COMPLETED"] == ["COMPLETED"]
    assert events[0]["status"] in {"IN_QUEUE", "IN_PROGRESS"}
    messages = [entry["message"] for e in events for entry in e["logs"] or []]
    assert len(messages) == len(set(messages))  # each log line is sent once, in the event that brought it
    assert "encoding frame 12/12" in messages


def test_stream_of_finished_request_sends_one_completed_event(stack, media):
    submitted = _submit(stack, media, num_frames=2)
    wait_until(lambda: httpx.get(submitted["status_url"], headers=AUTH).json()["status"] == "COMPLETED", 30, "done")
    with httpx.stream("GET", submitted["status_url"] + "/stream", headers=AUTH, timeout=30) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert [e["status"] for e in events] == ["COMPLETED"]
    assert events[0]["logs"] is None  # logs were not asked for


def test_health_ready_metrics(stack, media):
    assert httpx.get(f"{stack.base_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{stack.base_url}/readyz").json()
    assert ready["status"] == "ok" and ready["workers"] == 1
    _submit(stack, media, num_frames=2)
    text = httpx.get(f"{stack.base_url}/metrics").text
    assert 'lipsync_queue_depth{queue="lipsync"}' in text
    assert "lipsync_job_duration_seconds_bucket" in text
    assert 'lipsync_http_requests_total{method="POST",route="/pipio/lipsync",status="200"}' in text


def test_openapi_has_the_real_input_schema(stack):
    spec = httpx.get(f"{stack.base_url}/openapi.json").json()
    assert spec["paths"]  # routes are documented
    schemas = spec["components"]["schemas"]
    assert {"SubmitResponse", "CancelResponse", "ValidationErrorBody"} <= schemas.keys()
    for path in ("/pipio/lipsync", "/run/pipio/lipsync"):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        fields = schemas[body["$ref"].rsplit("/", 1)[1]]["properties"]
        assert {"video", "audio", "vae_chunk_size", "edit_removal_ranges", "seed"} <= fields.keys()
        assert fields["vae_chunk_size"]["default"] == 65
    output = spec["paths"]["/run/pipio/lipsync"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert schemas[output["$ref"].rsplit("/", 1)[1]]["required"] == ["video"]


def test_api_import_is_torch_free():
    code = "import sys, lipsync.server.app, lipsync.queue.jobs, lipsync.storage; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
