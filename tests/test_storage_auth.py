"""Signed URLs, uploads, API keys and request scoping, over real HTTP."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import httpx
import pytest

from lipsync.storage.signing import Signer, url_expiry
from tests.conftest import ALICE, BOB
from lipsync.testing.stack import wait_until


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

    base, signed = url.split("/files/", 1)
    expires, sig, key = signed.split("/", 2)
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    assert httpx.get(f"{base}/files/{expires}/{flipped}/{key}").status_code == 403
    assert httpx.get(f"{base}/files/{int(expires) + 1}/{sig}/{key}").status_code == 403  # stretched in time
    other = key.replace("clip.mp4", "other.mp4")
    assert httpx.get(f"{base}/files/{expires}/{sig}/{other}").status_code == 403  # another object
    assert httpx.get(f"{base}/files/{key}").status_code in (403, 404)  # unsigned

    # Signatures made with the server's own key: one already expired, one fresh.
    signer = Signer.from_settings(None, stack.workdir / "storage")
    past, fresh = int(time.time()) - 5, int(time.time()) + 60
    expired = httpx.get(f"{base}/files/{past}/{signer.sign('get', key, past)}/{key}")
    assert expired.status_code == 403 and expired.json()["error_type"] == "forbidden"
    assert httpx.get(f"{base}/files/{fresh}/{signer.sign('get', key, fresh)}/{key}").status_code == 200


def test_upload_put_needs_its_signature(stack):
    init = httpx.post(f"{stack.base_url}/storage/upload/initiate", json={"file_name": "a.mp4"}, headers=_auth(ALICE)).json()
    unsigned = init["upload_url"].split("?")[0]
    assert httpx.put(unsigned, content=b"x").status_code == 403
    # A download signature does not authorise an upload to the same key.
    expires, signature, _ = init["file_url"].split("/files/", 1)[1].split("/", 2)
    assert httpx.put(f"{unsigned}?expires={expires}&signature={signature}", content=b"x").status_code == 403


def test_upload_file_names_cannot_escape(stack):
    init = httpx.post(
        f"{stack.base_url}/storage/upload/initiate", json={"file_name": "../../../etc/passwd"}, headers=_auth(ALICE)
    ).json()
    key = urlsplit(init["file_url"]).path.split("/files/", 1)[1].split("/", 2)[2]
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


def test_keys_from_a_file_and_the_environment(tmp_path):
    from lipsync.server.auth import KeyRing
    from lipsync.server.errors import Unauthorized

    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\ncarol:secret-carol\n\nbare-secret  # no id\n")
    ring = KeyRing.load("alice:secret-alice", keys_file)
    assert ring.owner("Key alice:secret-alice") == "alice"
    assert ring.owner("Key secret-carol") == ring.owner("Key carol:secret-carol") == "carol"
    assert ring.owner("Key bare-secret").startswith("key-")
    for bad in ("Key carol:secret-alice", "Key nope", "", "Token secret-carol"):
        with pytest.raises(Unauthorized):
            ring.owner(bad)
    assert KeyRing.load("", None).owner(None) == "anonymous"


def test_a_file_signed_again_a_moment_later_gets_the_same_url():
    """Long-lived URLs expire on a step of ttl/1000 (≤ 60 s), so reading a result twice gives the same JSON;
    never earlier than asked; short-lived ones to the second."""
    week = 7 * 24 * 3600
    base = 1_800_000_000 - 1_800_000_000 % 60  # a multiple of 60: the step of a week's TTL
    a, b = url_expiry(week, now=base + 1.2), url_expiry(week, now=base + 58.9)
    assert a == b and a % 60 == 0 and base + 58.9 + week <= a < base + 1.2 + week + 60
    assert url_expiry(week, now=base + 61) == a + 60
    assert url_expiry(120, now=base + 7.5) == base + 7 + 120  # 1 s steps below 1000 s
    signer = Signer(b"k" * 32)
    assert signer.sign("get", "results/x", a) == signer.sign("get", "results/x", b)
