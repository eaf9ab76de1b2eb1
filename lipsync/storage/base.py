"""The storage interface: where inputs, uploads and results live, and how users get them back.

Keys are relative, slash-separated, made by us (``uploads/<id>/<name>``, ``results/<request id>/<name>``);
``safe_key`` rejects anything else. Backends: the filesystem (default; the API serves the files under signed
URLs) and, later, S3-compatible object stores (presigned URLs). Both the API and the workers use one.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class StoredObject:
    key: str
    content_type: str
    size: int
    digest: str | None = None
    """BLAKE2b-256 (hex) of the bytes, computed once when they were stored; None when the store does not know it
    (an object stored before it kept digests). The worker's video-side cache finds an upload's entries by it
    without downloading it again."""


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """Hex BLAKE2b-256 of a file's bytes (``StoredObject.digest``; the video-side cache's content address)."""
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ObjectTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"object is larger than {limit} bytes")
        self.limit = limit


def safe_key(key: str) -> str:
    """Return ``key`` if it is a well-formed object key; raise ValueError on traversal or odd characters."""
    if len(key) > 512 or not _KEY.match(key) or any(part in {".", ".."} for part in key.split("/")):
        raise ValueError(f"invalid object key: {key!r}")
    return key


def safe_file_name(name: str | None, default: str = "file.bin") -> str:
    """A file name fit for a key: no directories, no odd characters, at most 100 characters."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _UNSAFE_NAME.sub("_", base).lstrip("._-")[-100:]
    return cleaned or default


class Storage(ABC):
    """Put, get and link objects."""

    @abstractmethod
    def put_file(self, key: str, src: Path, content_type: str) -> StoredObject: ...

    @abstractmethod
    def put_chunks(
        self, key: str, chunks: Iterable[bytes], content_type: str, max_bytes: int
    ) -> StoredObject:
        """Store a stream; raises ObjectTooLarge (storing nothing) past ``max_bytes``."""

    @abstractmethod
    def get_to_path(self, key: str, dest: Path) -> StoredObject:
        """Copy an object to a local file; raises FileNotFoundError when it does not exist."""

    @abstractmethod
    def stat(self, key: str) -> StoredObject | None: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def url(self, key: str, *, base_url: str, ttl_s: int) -> str:
        """A URL a user can GET the object from until ``ttl_s`` seconds from now."""

    def delete_older_than(self, prefix: str, age_s: float) -> int:
        """Delete objects under ``prefix`` written more than ``age_s`` seconds ago; returns how many."""
        raise NotImplementedError(f"{type(self).__name__} cannot sweep old objects yet")
