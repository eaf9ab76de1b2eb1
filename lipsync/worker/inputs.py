"""Fetching a request's file inputs to local disk: our own storage, or a URL (guarded, bounded, sniffed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import filetype

from lipsync.contract.errors import FileDownloadError, InvalidMedia
from lipsync.contract.schema import STORAGE_SCHEME, File
from lipsync.storage import Storage
from lipsync.worker.job import LocalFile
from lipsync.worker.safe_http import DownloadError, SafeHttp

MEDIA_KINDS = ("video/", "audio/", "image/")


def fetch_input(
    field: str, file: File, dest_dir: Path, *, storage: Storage, http: SafeHttp, max_bytes: int,
    check: Callable[[], None] | None = None,
) -> LocalFile:
    """``check`` runs while a download waits (the request's cancel check): what it raises ends the fetch."""
    dest = dest_dir / f"input-{field}"
    if file.url.startswith(STORAGE_SCHEME):
        try:
            obj = storage.get_to_path(file.url[len(STORAGE_SCHEME):], dest)
        except FileNotFoundError:
            raise FileDownloadError("the uploaded file no longer exists", field=field) from None
        declared = obj.content_type
    else:
        try:
            declared = http.download(file.url, dest, max_bytes=max_bytes, check=check).content_type
        except DownloadError as exc:
            raise FileDownloadError(f"could not download {field}: {exc}", field=field) from None
    return LocalFile(dest, sniff(field, dest, declared))


def sniff(field: str, path: Path, declared: str) -> str:
    """The content type from the file's first bytes; refuses known non-media files and empty ones."""
    if path.stat().st_size == 0:
        raise InvalidMedia(f"{field} is an empty file", field=field)
    kind = filetype.guess(str(path))
    if kind is None:
        return declared or "application/octet-stream"  # unknown magic: let the decoder decide
    if not kind.mime.startswith(MEDIA_KINDS):
        raise InvalidMedia(f"{field} is not a media file (it looks like {kind.mime})", field=field)
    return kind.mime
