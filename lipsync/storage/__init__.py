"""Object storage shared by the API and the workers."""

from __future__ import annotations

from typing import Any

from lipsync.contract.settings import Settings
from lipsync.storage.base import ObjectTooLarge, Storage, StoredObject, safe_file_name, safe_key
from lipsync.storage.filesystem import FileSystemStorage
from lipsync.storage.signing import Signer


def public_result(result: dict[str, Any], storage: Storage, *, base_url: str, ttl_s: int) -> dict[str, Any]:
    """A stored result (files as ``{"key", …}``) as users see it: files as fal File objects with signed URLs."""
    out = {}
    for name, value in result.items():
        if isinstance(value, dict) and "key" in value:
            value = {
                "url": storage.url(value["key"], base_url=base_url, ttl_s=ttl_s),
                "content_type": value.get("content_type"),
                "file_name": value.get("file_name"),
                "file_size": value.get("file_size"),
            }
        out[name] = value
    return out


def make_signer(settings: Settings) -> Signer:
    return Signer.from_settings(settings.signing_secret, settings.storage_dir)


def make_storage(settings: Settings, signer: Signer) -> Storage:
    """The configured backend: filesystem (default) or an S3-compatible bucket (``LIPSYNC_STORAGE_BACKEND=s3``)."""
    if settings.storage_backend == "s3":
        from lipsync.storage.s3 import S3Storage  # boto3 is imported only when S3 is on

        return S3Storage.from_settings(settings)
    return FileSystemStorage(settings.storage_dir, signer)


__all__ = [
    "FileSystemStorage",
    "ObjectTooLarge",
    "Signer",
    "Storage",
    "StoredObject",
    "make_signer",
    "public_result",
    "make_storage",
    "safe_file_name",
    "safe_key",
]
