"""The whole path once, over plain HTTP with httpx: submit → worker → result → signed download."""

from __future__ import annotations

import httpx

from tests.conftest import ALICE
from lipsync.testing.media import data_uri_body, probe
from lipsync.testing.stack import wait_until


def test_submit_poll_result_download(stack, media, tmp_path):
    auth = {"Authorization": f"Key {ALICE}"}
    body = data_uri_body(media["video"], media["audio"])
    body["audio"] = {"url": body["audio"]}  # the File-object form
    submitted = httpx.post(f"{stack.base_url}/pipio/lipsync", json=body, headers=auth)
    assert submitted.status_code == 200, submitted.text
    body = submitted.json()
    assert body["status"] == "IN_QUEUE" and isinstance(body["queue_position"], int)
    assert body["status_url"] == f"{stack.base_url}/pipio/lipsync/requests/{body['request_id']}/status"

    def done():
        r = httpx.get(body["status_url"], params={"logs": 1}, headers=auth)
        return r.json() if r.json()["status"] == "COMPLETED" else None

    status = wait_until(done, 60, "completion")
    assert status.get("error") is None, status
    assert any("encoding frame" in entry["message"] for entry in status["logs"])
    result = httpx.get(body["response_url"], headers=auth)
    assert result.status_code == 200 and result.headers["x-fal-request-id"] == body["request_id"]
    out = result.json()["video"]
    assert out["content_type"] == "video/mp4" and out["file_name"] == "output.mp4"
    download = httpx.get(out["url"])
    assert download.status_code == 200 and len(download.content) == out["file_size"]
    path = tmp_path / "out.mp4"
    path.write_bytes(download.content)
    info = probe(path)
    assert info["frames"] == 12 and info["size"] == (64, 48) and info["fps"] == 25
