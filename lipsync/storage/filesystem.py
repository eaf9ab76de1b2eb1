"""Filesystem storage: objects under ``<root>/objects/<key>``, served by the API at ``/files/<key>``."""

from __future__ import annotations

import contextlib
import json
import re
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from lipsync.storage.base import ObjectTooLarge, Storage, StoredObject, file_digest, safe_key
from lipsync.storage.signing import Signer

FILES_PREFIX = "/files/"
_SIGNED_PATH = re.compile(r"/files/(?P<expires>\d+)/(?P<signature>[0-9a-f]{64})/(?P<key>.+)$")


def signed_file_url(signer: Signer, base_url: str, key: str, ttl_s: int) -> str:
    """Our own download URL for ``key``: the API serves it (or, for object stores, redirects to the bucket)."""
    return f"{base_url.rstrip('/')}{FILES_PREFIX}{signer.path('get', key, ttl_s)}/{safe_key(key)}"


def parse_file_path(path: str) -> tuple[str, str, str] | None:
    """``(expires, signature, key)`` of one of our signed file URL paths, else None."""
    match = _SIGNED_PATH.search(path)
    return (match["expires"], match["signature"], match["key"]) if match else None


class FileSystemStorage(Storage):
    def __init__(self, root: Path, signer: Signer):
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.signer = signer

    def path(self, key: str) -> Path:
        return self.objects / safe_key(key)

    def _meta_path(self, key: str) -> Path:
        return self.objects / (safe_key(key) + ".meta.json")

    def _tmp(self, key: str) -> Path:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")

    def _commit(self, key: str, tmp: Path, content_type: str) -> StoredObject:
        # Metadata first, then an atomic rename: a reader never sees a half-written object.
        size, digest = tmp.stat().st_size, file_digest(tmp)
        self._meta_path(key).write_text(json.dumps({"content_type": content_type, "blake2b": digest}))
        os.replace(tmp, self.path(key))
        return StoredObject(key=key, content_type=content_type, size=size, digest=digest)

    def put_file(self, key: str, src: Path, content_type: str) -> StoredObject:
        tmp = self._tmp(key)
        try:
            shutil.copyfile(src, tmp)
            return self._commit(key, tmp, content_type)
        finally:
            tmp.unlink(missing_ok=True)

    def put_chunks(self, key: str, chunks: Iterable[bytes], content_type: str, max_bytes: int) -> StoredObject:
        tmp = self._tmp(key)
        try:
            written = 0
            with open(tmp, "wb") as fh:
                for chunk in chunks:
                    written += len(chunk)
                    if written > max_bytes:
                        raise ObjectTooLarge(max_bytes)
                    fh.write(chunk)
            return self._commit(key, tmp, content_type)
        finally:
            tmp.unlink(missing_ok=True)

    def get_to_path(self, key: str, dest: Path) -> StoredObject:
        obj = self.stat(key)
        if obj is None:
            raise FileNotFoundError(key)
        shutil.copyfile(self.path(key), dest)
        return obj

    def stat(self, key: str) -> StoredObject | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            meta = json.loads(self._meta_path(key).read_text())
            content_type, digest = meta["content_type"], meta.get("blake2b")
        except (OSError, ValueError, KeyError):
            content_type, digest = "application/octet-stream", None
        return StoredObject(key=key, content_type=content_type, size=path.stat().st_size, digest=digest)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)
        self._meta_path(key).unlink(missing_ok=True)

    def delete_older_than(self, prefix: str, age_s: float) -> int:
        cutoff, deleted = time.time() - age_s, 0
        root = self.objects / safe_key(prefix.rstrip("/"))
        if not root.is_dir():
            return 0
        for path in root.rglob("*"):
            if path.is_file() and not path.name.endswith(".meta.json") and not path.name.startswith("."):
                if path.stat().st_mtime < cutoff:
                    self.delete(str(path.relative_to(self.objects)))
                    deleted += 1
        for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only empty ones go
        return deleted

    def url(self, key: str, *, base_url: str, ttl_s: int) -> str:
        return signed_file_url(self.signer, base_url, key, ttl_s)
