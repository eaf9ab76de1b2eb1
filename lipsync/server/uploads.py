"""Uploads: streaming request bodies into storage, and multipart sessions for both clients' large files.

A multipart session lives in ``<storage_dir>/.parts/<upload id>/`` on the API host (a shared storage folder
makes it work across API replicas): the target key, the content type, then one file a part. ``complete``
joins the listed parts in order into one object and removes the session. The size limit holds as parts
arrive (a part may take only what the others left), and ``sweep`` removes sessions nobody touched for the
uploads' retention.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from lipsync.contract.errors import InvalidInput
from lipsync.server.errors import NotFound, PayloadTooLarge
from lipsync.server.http import iter_body
from lipsync.storage import Storage, StoredObject, safe_key

MAX_PARTS = 10_000
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


async def stream_to_file(request: Request, dest: Path, limit: int) -> str:
    """Write the request body to ``dest``, refusing more than ``limit`` bytes; returns the body's MD5 (an ETag)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"File is larger than {limit} bytes")
    digest, size = hashlib.md5(usedforsecurity=False), 0
    with open(dest, "wb") as fh:
        async for chunk in iter_body(request):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"File is larger than {limit} bytes")
            digest.update(chunk)
            fh.write(chunk)
    return digest.hexdigest()


async def store_body(request: Request, storage: Storage, key: str, content_type: str, limit: int) -> StoredObject:
    fd, tmp = tempfile.mkstemp(prefix="upload-")
    os.close(fd)
    try:
        await stream_to_file(request, Path(tmp), limit)
        return await run_in_threadpool(storage.put_file, key, Path(tmp), content_type)
    finally:
        Path(tmp).unlink(missing_ok=True)


class MultipartUploads:
    def __init__(self, root: Path, storage: Storage, limit: int):
        self.root = Path(root) / ".parts"
        self.storage = storage
        self.limit = limit

    def _dir(self, upload_id: str) -> Path:
        if not _UPLOAD_ID.match(upload_id) or not (self.root / upload_id).is_dir():
            raise NotFound("no such multipart upload")
        return self.root / upload_id

    def begin(self, key: str, content_type: str) -> str:
        upload_id = secrets.token_hex(16)
        session = self.root / upload_id
        session.mkdir(parents=True)
        (session / "key").write_text(safe_key(key))
        (session / "content-type").write_text(content_type)
        return upload_id

    def key(self, upload_id: str) -> str:
        return (self._dir(upload_id) / "key").read_text()

    async def put_part(self, request: Request, upload_id: str, number: int) -> str:
        if not 1 <= number <= MAX_PARTS:
            raise InvalidInput(f"part number must be between 1 and {MAX_PARTS}", field="partNumber")
        session = self._dir(upload_id)
        name = f"part-{number:05d}"
        tmp = session / f".{name}.{secrets.token_hex(4)}"
        try:
            etag = await stream_to_file(request, tmp, self.limit - self._others(session, {name, tmp.name}))
            if tmp.stat().st_size + self._others(session, {name, tmp.name}) > self.limit:  # parts sent at once
                raise PayloadTooLarge(f"File is larger than {self.limit} bytes")
            os.replace(tmp, session / name)
            return etag
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _others(session: Path, mine: set[str]) -> int:
        """Bytes the session's other parts hold, those still arriving included."""
        total = 0
        for part in session.glob("*part-*"):
            if part.name not in mine:
                try:
                    total += part.stat().st_size
                except FileNotFoundError:  # renamed or removed as we looked
                    pass
        return total

    def sweep(self, max_age_s: float) -> int:
        """Remove sessions with no part written for ``max_age_s`` (abandoned uploads); returns how many."""
        if not self.root.is_dir():
            return 0
        cutoff, removed = time.time() - max_age_s, 0
        for session in self.root.iterdir():
            try:
                newest = max([session.stat().st_mtime, *(f.stat().st_mtime for f in session.iterdir())])
            except OSError:
                continue  # completed or swept meanwhile
            if newest < cutoff:
                shutil.rmtree(session, ignore_errors=True)
                removed += 1
        return removed

    def complete(self, upload_id: str, numbers: list[int]) -> StoredObject:
        session = self._dir(upload_id)
        # Clients upload parts concurrently and list them in the order they finished: join by number.
        parts = [session / f"part-{n:05d}" for n in sorted(numbers)]
        if not numbers or len(set(numbers)) != len(numbers) or not all(p.exists() for p in parts):
            raise InvalidInput("parts must be listed once each and all be uploaded", field="parts")
        if sum(p.stat().st_size for p in parts) > self.limit:
            shutil.rmtree(session, ignore_errors=True)
            raise PayloadTooLarge(f"File is larger than {self.limit} bytes")
        joined = session / "joined"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 20)
        try:
            return self.storage.put_file(self.key(upload_id), joined, (session / "content-type").read_text())
        finally:
            shutil.rmtree(session, ignore_errors=True)
