"""Signed URLs, uploads, API keys and request scoping, over real HTTP."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from storage.signing import Signer
from tests.conftest import ALICE, BOB
from tests.support import wait_until


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Key {key}"}


def _upload(stack, data: bytes, name: str = "clip.mp4") -> dict:
    init = httpx.post(f"{stack.base_url}/storage/upload/initiate", json={"file_name": name, "content_type": "video/mp4"},
                      headers=_auth(ALICE))
    assert init.status_code == 200, init.text
    body = init.json()
    assert httpx.put(body["upload_url"], content=data, headers={"Content-Type": "video/mp4"}).status_code == 200
    return body


def test_signed_url_valid_tampered_expired(stack, media):
    data = media["video"].read_bytes()
    url = _upload(stack, data)["file_url"]
    ok = httpx.get(url)
    assert ok.status_code == 200 and ok.content == data and ok.headers["content-type"] == "video/mp4"

    parts = urlsplit(url)
    query = parse_qs(parts.query)
    sig, expires = query["signature"][0], query["expires"][0]
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    assert httpx.get(f"{base}?expires={expires}&signature={flipped}").status_code == 403
    assert httpx.get(f"{base}?expires={int(expires) + 1}&signature={sig}").status_code == 403  # stretched
    assert httpx.get(base).status_code == 403
    other_key = parts.path.replace("clip.mp4", "other.mp4")
    assert httpx.get(f"{parts.scheme}://{parts.netloc}{other_key}?expires={expires}&signature={sig}").status_code == 403

    # A URL signed with the server's own key but already expired.
    signer = Signer.from_settings(None, stack.workdir / "storage")
    key = parts.path.split("/files/", 1)[1]
    past = int(time.time()) - 5
    expired = httpx.get(f"{base}?expires={past}&signature={signer.sign('get', key, past)}")
    assert expired.status_code == 403 and expired.json()["error_type"] == "forbidden"
    fresh = int(time.time()) + 60
    assert httpx.get(f"{base}?expires={fresh}&signature={signer.sign('get', key, fresh)}").status_code == 200


def test_upload_put_needs_its_signature(stack):
    init = httpx.post(f"{stack.base_url}/storage/upload/initiate", json={"file_name": "a.mp4"}, headers=_auth(ALICE)).json()
    unsigned = init["upload_url"].split("?")[0]
    assert httpx.put(unsigned, content=b"x").status_code == 403
    # A download signature does not authorise an upload to the same key.
    get_query = init["file_url"].split("?")[1]
    assert httpx.put(f"{unsigned}?{get_query}", content=b"x").status_code == 403


def test_upload_file_names_cannot_escape(stack):
    init = httpx.post(
        f"{stack.base_url}/storage/upload/initiate", json={"file_name": "../../../etc/passwd"}, headers=_auth(ALICE)
    ).json()
    key = urlsplit(init["file_url"]).path.split("/files/", 1)[1]
    assert key.startswith("uploads/") and ".." not in key and key.endswith("/passwd")
    httpx.put(init["upload_url"], content=b"data")
    assert (stack.workdir / "storage" / "objects" / key).read_bytes() == b"data"
    assert not (stack.workdir / "etc").exists()


@pytest.mark.parametrize("header", [None, "Key wrong", "Key alice:secret-bob", "Bearer nope", "Basic abc"])
def test_missing_or_wrong_key_is_401(stack, header):
    headers = {"Authorization": header} if header else {}
    response = httpx.post(f"{stack.base_url}/pipio/lipsync", json={}, headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": "Unauthorized: missing or invalid API key", "error_type": "unauthorized"}
    assert httpx.post(f"{stack.base_url}/storage/upload/initiate", json={}, headers=headers).status_code == 401


def test_key_forms_and_request_scoping(stack, media):
    upload = _upload(stack, media["video"].read_bytes())["file_url"]
    body = {"video": upload, "audio": upload, "use_custom_prompt": True, "custom_prompt": "test:slow=0.3"}
    # both header forms of alice's key are the same owner
    submitted = httpx.post(f"{stack.base_url}/pipio/lipsync", json=body, headers=_auth("secret-alice")).json()
    assert httpx.get(submitted["status_url"], headers=_auth(ALICE)).status_code in (200, 202)
    for url in (submitted["status_url"], submitted["response_url"], submitted["status_url"] + "/stream"):
        response = httpx.get(url, headers=_auth(BOB))
        assert response.status_code == 404, url
    assert httpx.put(submitted["cancel_url"], headers=_auth(BOB)).status_code == 404
    assert httpx.put(submitted["cancel_url"], headers=_auth(ALICE)).status_code == 202
    assert httpx.get(f"{stack.base_url}/pipio/lipsync/requests/not-a-uuid/status", headers=_auth(ALICE)).status_code == 404


def test_result_before_completion_is_400(stack, media):
    data = _upload(stack, media["video"].read_bytes())["file_url"]
    body = {"video": data, "audio": data, "use_custom_prompt": True, "custom_prompt": "test:slow=0.3", "num_frames": 20}
    submitted = httpx.post(f"{stack.base_url}/pipio/lipsync", json=body, headers=_auth(ALICE)).json()
    early = httpx.get(submitted["response_url"], headers=_auth(ALICE))
    assert early.status_code == 400 and early.json()["error_type"] == "request_in_progress"
    httpx.put(submitted["cancel_url"], headers=_auth(ALICE))
    wait_until(lambda: httpx.get(submitted["status_url"], headers=_auth(ALICE)).json()["status"] == "COMPLETED", 30,
               "cancel")
    cancelled = httpx.get(submitted["response_url"], headers=_auth(ALICE))
    assert cancelled.status_code == 499 and cancelled.json()["error_type"] == "client_cancelled"
