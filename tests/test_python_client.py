"""The official Python client (fal-client, pinned) against the real stack, changed only in where it points.

Route (b), plain http: ``lipsync.client.point_fal_client(base_url)``. Route (a), no code change at all,
is ``test_tls_env_only_no_code_change`` below.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import fal_client
import httpx
import pytest
import trustme

from lipsync.client import point_fal_client
from tests.conftest import ALICE
from lipsync.testing.media import probe
from lipsync.testing.stack import make_stack, wait_until

APP = "pipio/lipsync"


@pytest.fixture
def client(stack) -> fal_client.SyncClient:
    point_fal_client(stack.base_url)
    return fal_client.SyncClient(key=ALICE)


def _inputs(media, **extra):
    return {"video": fal_client.encode_file(media["video"]), "audio": fal_client.encode_file(media["audio"]), **extra}


def _download(url: str, tmp_path) -> dict:
    path = tmp_path / "result.mp4"
    path.write_bytes(httpx.get(url).content)
    return probe(path)


def test_subscribe_with_logs(client, media, tmp_path):
    updates = []
    result = client.subscribe(APP, _inputs(media), with_logs=True, on_queue_update=updates.append)
    kinds = {type(u).__name__ for u in updates}
    assert "Completed" in kinds and kinds <= {"Queued", "InProgress", "Completed"}
    logs = [entry["message"] for u in updates if getattr(u, "logs", None) for entry in u.logs]
    assert any(m.startswith("encoding frame") for m in logs)
    info = _download(result["video"]["url"], tmp_path)
    assert info["frames"] == 12 and info["size"] == (64, 48)


def test_submit_status_result_and_calls_by_id(client, media, tmp_path):
    handle = client.submit(APP, _inputs(media, num_frames=5))
    assert isinstance(handle.status(), (fal_client.Queued, fal_client.InProgress, fal_client.Completed))
    result = handle.get()
    assert _download(result["video"]["url"], tmp_path)["frames"] == 5
    # Calls by id rebuild URLs from the module constants: point_fal_client covers them too.
    done = client.status(APP, handle.request_id, with_logs=True)
    assert isinstance(done, fal_client.Completed) and done.error is None and done.logs
    assert client.result(APP, handle.request_id) == result


def test_upload_file_both_repositories(client, media, tmp_path):
    v3_url = client.upload_file(media["video"])  # storage/auth/token + files/upload
    gcs_url = client.upload(media["audio"].read_bytes(), "audio/wav", "speech.wav", repository="fal")  # initiate + PUT
    assert v3_url.startswith("http://127.0.0.1") and gcs_url.startswith("http://127.0.0.1")
    assert httpx.get(v3_url).content == media["video"].read_bytes()
    result = client.subscribe(APP, {"video": v3_url, "audio": {"url": gcs_url}, "num_frames": 4})
    assert _download(result["video"]["url"], tmp_path)["frames"] == 4


def test_multipart_upload(client, media, monkeypatch, stack):
    # Files over 100 MB go through the client's multipart flow; small thresholds exercise the same code.
    monkeypatch.setattr(fal_client.client, "MULTIPART_THRESHOLD", 1000)
    monkeypatch.setattr(fal_client.client, "MULTIPART_CHUNK_SIZE", 1024)
    data = media["long_video"].read_bytes()
    assert len(data) > 3 * 1024  # several parts
    url = client.upload(data, "video/mp4", "big.mp4")
    download = httpx.get(url)
    assert download.content == data and download.headers["content-type"] == "video/mp4"
    assert not list((stack.workdir / "storage" / ".parts").iterdir())


def test_sync_run(client, media):
    result = client.run(APP, _inputs(media, num_frames=3))
    assert result["video"]["content_type"] == "video/mp4" and result["video"]["file_size"] > 0


def test_cancel_queued_and_running(client, media):
    slow = _inputs(media, use_custom_prompt=True, custom_prompt="test:slow=0.5", num_frames=60)
    running = client.submit(APP, slow)
    wait_until(lambda: isinstance(running.status(), fal_client.InProgress), 30, "the first request to start")
    queued = client.submit(APP, _inputs(media))
    assert isinstance(queued.status(), fal_client.Queued)

    queued.cancel()
    status = queued.status(with_logs=True)
    assert isinstance(status, fal_client.Completed) and status.error_type == "client_cancelled"
    assert not any("Fetching inputs" in e["message"] for e in status.logs)  # it never started

    running.cancel()
    status = wait_until(lambda: (s := running.status(with_logs=True)) and isinstance(s, fal_client.Completed) and s, 30, "cancel")
    assert status.error_type == "client_cancelled"
    frames_done = [e["message"] for e in status.logs if e["message"].startswith("encoding frame")]
    assert frames_done and not frames_done[-1].endswith("60/60")  # stopped part-way

    with pytest.raises(fal_client.client.FalClientHTTPError) as err:
        running.get()
    assert err.value.status_code == 499 and "cancelled" in str(err.value)
    with pytest.raises(fal_client.client.FalClientHTTPError) as again:
        running.cancel()
    assert again.value.status_code == 400  # ALREADY_COMPLETED


def test_validation_error_reaches_the_client(client, media):
    with pytest.raises(fal_client.client.FalClientHTTPError) as err:
        client.submit(APP, _inputs(media, vae_chunk_size=10))
    assert err.value.status_code == 422
    assert err.value.message[0]["loc"] == ["body", "vae_chunk_size"]


def test_tls_env_only_no_code_change(tmp_path_factory, media):
    """Route (a): HTTPS with a test CA; the client is configured only by environment variables."""
    workdir = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_pem, cert_pem, key_pem = workdir / "ca.pem", workdir / "cert.pem", workdir / "key.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    stack = make_stack(workdir)
    stack.env["SSL_CERT_FILE"] = str(ca_pem)
    try:
        base = stack.start_api("--ssl-certfile", str(cert_pem), "--ssl-keyfile", str(key_pem), scheme="https")
        stack.start_worker("tls-w1")
        host = base.removeprefix("https://")
        script = textwrap.dedent(
            f"""
            import json, fal_client
            args = {{"video": fal_client.encode_file({str(media['video'])!r}),
                     "audio": fal_client.encode_file({str(media['audio'])!r}), "num_frames": 6}}
            print(json.dumps(fal_client.subscribe("pipio/lipsync", arguments=args)))
            """
        )
        env = dict(stack.env, FAL_QUEUE_RUN_HOST=host, FAL_RUN_HOST=f"{host}/run", FAL_KEY=ALICE)
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr + stack.logs()
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["video"]["url"].startswith(base + "/files/")
    finally:
        stack.stop()


def test_sync_run_cancels_when_the_caller_goes_away(stack, media):
    """A synchronous run whose caller disconnects is cancelled, so no GPU works for nobody."""
    body = _inputs(media, use_custom_prompt=True, custom_prompt="test:slow=0.3", num_frames=40)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{stack.base_url}/run/{APP}", json=body, headers={"Authorization": f"Key {ALICE}"}, timeout=1.5)
    r = stack.redis

    def cancelled_one() -> bool:
        records = [r.hgetall(key) for key in r.scan_iter("lipsync:req:*")]
        return any(
            rec.get(b"status") == b"COMPLETED"
            and b"client_cancelled" in rec.get(b"error", b"")
            and json.loads(rec[b"input"])["num_frames"] == 40
            for rec in records
        )

    wait_until(cancelled_one, 30, "the abandoned run to be cancelled")
