"""Per-key limits (429 with Retry-After) and retention (files and records deleted after their time)."""

from __future__ import annotations


import httpx
import pytest

from tests.conftest import ALICE, BOB, _stack
from lipsync.testing.media import data_uri_body
from lipsync.testing.stack import wait_until


def _body(media, **extra) -> dict:
    return data_uri_body(media["video"], media["audio"], **extra)


def _post(stack, key: str, body: dict) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/pipio/lipsync", json=body, headers={"Authorization": f"Key {key}"})


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    yield from _stack(
        tmp_path_factory, "limited", max_inflight_per_key="2", rate_limit_per_minute="4",
        max_request_bytes="300000", max_input_bytes="100000",
    )


def test_oversized_bodies_data_uris_and_uploads_are_413(limited, media):
    auth = {"Authorization": f"Key {ALICE}"}
    big = "data:video/mp4;base64," + "A" * 400_000  # over the request limit
    response = _post(limited, ALICE, {"video": big, "audio": big})
    assert response.status_code == 413 and response.json()["error_type"] == "payload_too_large"
    # under the request limit, but the decoded file is over the input limit: 422 naming the field
    inlined = "data:video/mp4;base64," + "A" * 140_000
    response = _post(limited, ALICE, {"video": inlined, "audio": "https://example.com/a.wav"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "video"]
    init = httpx.post(f"{limited.base_url}/storage/upload/initiate", json={"file_name": "a.mp4"}, headers=auth).json()
    upload = httpx.put(init["upload_url"], content=b"x" * 100_001)
    assert upload.status_code == 413 and upload.json()["error_type"] == "payload_too_large"
    assert httpx.get(init["file_url"]).status_code == 404  # nothing was stored
    served = _post(limited, ALICE, _body(media, num_frames=2))  # the server keeps serving
    assert served.status_code == 200
    _wait_done(limited, ALICE, served.json())


def _wait_done(stack, key: str, submitted: dict) -> None:
    auth = {"Authorization": f"Key {key}"}
    wait_until(lambda: httpx.get(submitted["status_url"], headers=auth).json()["status"] == "COMPLETED", 30, "done")


def test_rate_limit_per_key(limited, media):
    for _ in range(4):  # one at a time: the in-flight cap never matters here
        accepted = _post(limited, BOB, _body(media, num_frames=2))
        assert accepted.status_code == 200
        _wait_done(limited, BOB, accepted.json())
    refused = _post(limited, BOB, _body(media, num_frames=2))
    assert refused.status_code == 429 and refused.json()["error_type"] == "rate_limited"
    assert "4 requests a minute" in refused.json()["detail"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_inflight_cap_per_key(limited, media):
    slow = _body(media, use_custom_prompt=True, custom_prompt="test:slow=0.2", num_frames=12)
    first, second = _post(limited, ALICE, slow), _post(limited, ALICE, slow)
    assert first.status_code == second.status_code == 200
    third = _post(limited, ALICE, slow)
    assert third.status_code == 429 and int(third.headers["retry-after"]) >= 1
    assert third.json()["error_type"] == "rate_limited" and "2 unfinished" in third.json()["detail"]
    httpx.put(second.json()["cancel_url"], headers={"Authorization": f"Key {ALICE}"})
    _wait_done(limited, ALICE, second.json())
    assert _post(limited, ALICE, _body(media, num_frames=2)).status_code == 200  # a slot is free again


@pytest.fixture(scope="module")
def short_lived(tmp_path_factory):
    yield from _stack(
        tmp_path_factory, "retention", result_ttl_s="2", upload_ttl_s="2", retention_interval_s="0.3"
    )


def test_results_inputs_and_uploads_are_deleted_after_retention(short_lived, media):
    auth = {"Authorization": f"Key {ALICE}"}
    objects = short_lived.workdir / "storage" / "objects"
    init = httpx.post(f"{short_lived.base_url}/storage/upload/initiate", json={"file_name": "v.mp4"}, headers=auth).json()
    httpx.put(init["upload_url"], content=media["video"].read_bytes())
    body = _body(media, num_frames=2) | {"video": init["file_url"]}
    submitted = _post(short_lived, ALICE, body).json()
    done = wait_until(lambda: httpx.get(submitted["response_url"], headers=auth).status_code == 200, 30, "result")
    assert done
    result_url = httpx.get(submitted["response_url"], headers=auth).json()["video"]["url"]
    assert httpx.get(result_url).status_code == 200
    rid = submitted["request_id"]
    assert (objects / "results" / rid).is_dir()

    def all_gone() -> bool:
        results = list((objects / "results").rglob("*.mp4")) if (objects / "results").exists() else []
        uploads = list((objects / "uploads").rglob("*.mp4")) if (objects / "uploads").exists() else []
        inputs = list((objects / "inputs").rglob("audio")) if (objects / "inputs").exists() else []
        return not results and not uploads and not inputs

    wait_until(all_gone, 20, "retention to delete results, inputs and uploads")
    assert httpx.get(result_url).status_code == 404
    assert httpx.get(submitted["status_url"], headers=auth).status_code == 404  # the record expired too
