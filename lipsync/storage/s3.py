"""S3-compatible object storage (AWS S3, MinIO, SeaweedFS, Ceph RGW, R2, …) through boto3.

Objects live at ``<prefix><key>`` in one bucket, addressed path-style (``<endpoint>/<bucket>/<key>``, which
every S3-compatible server supports). Users download them through presigned GET URLs that expire; the API's
own signed ``/files/…`` URLs (upload ``file_url``s) answer a 307 redirect to such a URL.

This module imports boto3: ``lipsync.storage.make_storage`` imports it only when ``LIPSYNC_STORAGE_BACKEND=s3``,
so the API starts as fast as before with filesystem storage.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from lipsync.storage.base import ObjectTooLarge, Storage, StoredObject, file_digest, safe_key

# SigV4 presigned URLs cannot live longer than 7 days.
MAX_PRESIGN_TTL_S = 7 * 24 * 3600
# put_chunks keeps this much of a stream in memory before spilling it to a temporary file.
SPOOL_BYTES = 8 * 1024 * 1024
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_BUCKET_EXISTS = {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}
DEFAULT_CONTENT_TYPE = "application/octet-stream"


class S3StorageError(OSError):
    """The object store failed (unreachable, refused, misconfigured). An OSError, like a failing disk."""


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _client(
    endpoint_url: str | None, region: str, access_key_id: str | None, secret_access_key: str | None
) -> Any:
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        retries={"max_attempts": 4, "mode": "standard"},
        # Checksums only where S3 requires them: newer defaults trip some S3-compatible servers.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connect_timeout=10,
        read_timeout=120,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url or None,
        region_name=region,
        # None falls back to boto3's own chain (AWS_* variables, shared files, instance roles).
        aws_access_key_id=access_key_id or None,
        aws_secret_access_key=secret_access_key or None,
        config=config,
    )


class S3Storage(Storage):
    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        prefix: str = "",
        create_bucket: bool = False,
        transfer_config: TransferConfig | None = None,
    ):
        if not bucket:
            raise ValueError("S3 storage needs a bucket (LIPSYNC_S3_BUCKET)")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = _client(endpoint_url, region, access_key_id, secret_access_key)
        # Presigned URLs name the host users reach; inside a compose network that is often another one.
        self.presign_client = (
            _client(public_endpoint_url, region, access_key_id, secret_access_key)
            if public_endpoint_url and public_endpoint_url != endpoint_url
            else self.client
        )
        self.transfer_config = transfer_config or TransferConfig()
        if create_bucket:
            self.ensure_bucket()

    @classmethod
    def from_settings(cls, settings: Any) -> "S3Storage":
        return cls(
            settings.s3_bucket or "",
            endpoint_url=settings.s3_endpoint_url,
            public_endpoint_url=settings.s3_public_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
            prefix=settings.s3_prefix,
            create_bucket=settings.s3_create_bucket,
        )

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (API and workers may race here: both win)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as err:
            if _code(err) not in _NOT_FOUND and _code(err) != "NoSuchBucket":
                raise S3StorageError(f"cannot reach bucket {self.bucket!r}: {err}") from None
        except BotoCoreError as err:
            raise S3StorageError(f"cannot reach the object store: {err}") from None
        try:
            self.client.create_bucket(Bucket=self.bucket)
        except ClientError as err:
            if _code(err) not in _BUCKET_EXISTS:
                raise S3StorageError(f"cannot create bucket {self.bucket!r}: {err}") from None
        except BotoCoreError as err:
            raise S3StorageError(f"cannot create bucket {self.bucket!r}: {err}") from None

    def object_name(self, key: str) -> str:
        """The S3 key of one of our keys."""
        return self.prefix + safe_key(key)

    # --- Storage ----------------------------------------------------------------------------------------

    def put_file(self, key: str, src: Path, content_type: str) -> StoredObject:
        name = self.object_name(key)
        size, digest = Path(src).stat().st_size, file_digest(Path(src))
        try:
            # boto3's transfer manager: multipart (with parallel parts) above its threshold.
            self.client.upload_file(str(src), self.bucket, name, Config=self.transfer_config,
                                    ExtraArgs={"ContentType": content_type, "Metadata": {"blake2b": digest}})
        except (ClientError, BotoCoreError) as err:
            raise S3StorageError(f"could not store {key}: {err}") from None
        return StoredObject(key=key, content_type=content_type, size=size, digest=digest)

    def put_chunks(self, key: str, chunks: Iterable[bytes], content_type: str, max_bytes: int) -> StoredObject:
        # The whole stream is read (and bounded) before anything is sent: an oversized one stores nothing.
        name = self.object_name(key)
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
            written = 0
            for chunk in chunks:
                written += len(chunk)
                if written > max_bytes:
                    raise ObjectTooLarge(max_bytes)
                spool.write(chunk)
            spool.seek(0)
            try:
                self.client.upload_fileobj(
                    spool, self.bucket, name, ExtraArgs={"ContentType": content_type}, Config=self.transfer_config
                )
            except (ClientError, BotoCoreError) as err:
                raise S3StorageError(f"could not store {key}: {err}") from None
        return StoredObject(key=key, content_type=content_type, size=written)

    def get_to_path(self, key: str, dest: Path) -> StoredObject:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.object_name(key))
        except ClientError as err:
            if _code(err) in _NOT_FOUND:
                raise FileNotFoundError(key) from None
            raise S3StorageError(f"could not read {key}: {err}") from None
        except BotoCoreError as err:
            raise S3StorageError(f"could not read {key}: {err}") from None
        body = response["Body"]
        try:
            with open(dest, "wb") as fh:
                shutil.copyfileobj(body, fh, 1 << 20)
        except BotoCoreError as err:
            raise S3StorageError(f"could not read {key}: {err}") from None
        finally:
            body.close()
        return StoredObject(
            key=key,
            content_type=response.get("ContentType") or DEFAULT_CONTENT_TYPE,
            size=Path(dest).stat().st_size,
            digest=(response.get("Metadata") or {}).get("blake2b"),
        )

    def stat(self, key: str) -> StoredObject | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.object_name(key))
        except ClientError as err:
            if _code(err) in _NOT_FOUND:
                return None
            raise S3StorageError(f"could not stat {key}: {err}") from None
        except BotoCoreError as err:
            raise S3StorageError(f"could not stat {key}: {err}") from None
        return StoredObject(
            key=key, content_type=head.get("ContentType") or DEFAULT_CONTENT_TYPE, size=int(head["ContentLength"]),
            digest=(head.get("Metadata") or {}).get("blake2b"),
        )

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.object_name(key))  # no error when missing
        except (ClientError, BotoCoreError) as err:
            raise S3StorageError(f"could not delete {key}: {err}") from None

    def delete_older_than(self, prefix: str, age_s: float) -> int:
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=age_s)
        root = self.object_name(prefix.rstrip("/")) + "/"
        deleted, batch = 0, []

        def flush() -> None:
            nonlocal deleted, batch
            if batch:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                deleted, batch = deleted + len(batch), []

        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root):
                for obj in page.get("Contents", []):
                    if obj["LastModified"] < cutoff:
                        batch.append({"Key": obj["Key"]})
                    if len(batch) == 1000:  # DeleteObjects' limit
                        flush()
            flush()
        except (ClientError, BotoCoreError) as err:
            raise S3StorageError(f"could not sweep {prefix}: {err}") from None
        return deleted

    def url(self, key: str, *, base_url: str, ttl_s: int) -> str:
        """A presigned GET URL at the bucket (``base_url`` is unused), valid ``ttl_s`` s, at most 7 days."""
        ttl = max(1, min(int(ttl_s), MAX_PRESIGN_TTL_S))
        return self.presign_client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.object_name(key)}, ExpiresIn=ttl
        )
