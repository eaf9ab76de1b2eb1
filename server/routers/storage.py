"""File storage routes: the upload flows of both official clients, and signed downloads.

- JS: ``POST /storage/upload/initiate`` → ``PUT upload_url`` (signed, no auth header) → use ``file_url``.
- Python: ``POST /storage/auth/token`` → ``POST /files/upload`` with the token → use ``access_url``;
  its fallback is the JS flow with ``storage_type=gcs``.
- Everyone: ``GET /files/<key>?expires=…&signature=…`` (filesystem storage; S3 URLs point at the bucket).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse

from server.auth import require_owner
from server.errors import Forbidden, NotFound, PayloadTooLarge
from server.http import base_url_of
from server.protocol import (
    ERROR_RESPONSES,
    UploadedFile,
    UploadInitiateRequest,
    UploadInitiateResponse,
    UploadTokenResponse,
)
from storage import FileSystemStorage, Signer, Storage, safe_file_name, safe_key

router = APIRouter(tags=["storage"], responses=ERROR_RESPONSES)

UPLOAD_URL_TTL_S = 3600
TOKEN_TTL_S = 3600


def _storage(request: Request) -> Storage:
    return request.app.state.storage


def _signer(request: Request) -> Signer:
    return request.app.state.signer


def _new_key(file_name: str | None) -> str:
    return f"uploads/{uuid.uuid4().hex}/{safe_file_name(file_name)}"


def _file_url(request: Request, key: str) -> str:
    return _storage(request).url(key, base_url=base_url_of(request), ttl_s=request.app.state.settings.url_ttl_s)


async def _store_body(request: Request, key: str, content_type: str) -> None:
    """Stream the request body to a temporary file (bounded), then into storage."""
    limit = request.app.state.settings.max_input_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"File is larger than {limit} bytes")
    fd, tmp = tempfile.mkstemp(prefix="upload-")
    try:
        size = 0
        with os.fdopen(fd, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"File is larger than {limit} bytes")
                fh.write(chunk)
        await run_in_threadpool(_storage(request).put_file, key, Path(tmp), content_type)
    finally:
        Path(tmp).unlink(missing_ok=True)


@router.post("/storage/upload/initiate", response_model=UploadInitiateResponse)
def initiate_upload(
    request: Request, body: UploadInitiateRequest, owner: Annotated[str, Depends(require_owner)]
) -> UploadInitiateResponse:
    key = _new_key(body.file_name)
    query = _signer(request).query("put", key, UPLOAD_URL_TTL_S)
    return UploadInitiateResponse(
        upload_url=f"{base_url_of(request)}/storage/upload/{key}?{query}", file_url=_file_url(request, key)
    )


@router.put("/storage/upload/{key:path}")
async def put_upload(request: Request, key: str, expires: str | None = None, signature: str | None = None) -> JSONResponse:
    if not _signer(request).verify("put", key, expires, signature):
        raise Forbidden()
    content_type = request.headers.get("content-type") or "application/octet-stream"
    await _store_body(request, safe_key(key), content_type)
    return JSONResponse({})


@router.post("/storage/auth/token", response_model=UploadTokenResponse)
def upload_token(request: Request, owner: Annotated[str, Depends(require_owner)]) -> UploadTokenResponse:
    token, expires = _signer(request).token(owner, TOKEN_TTL_S)
    return UploadTokenResponse(
        token=token,
        token_type="Bearer",
        base_url=base_url_of(request),
        expires_at=datetime.fromtimestamp(expires, timezone.utc).isoformat(),
    )


@router.post("/files/upload", response_model=UploadedFile)
async def upload_file(request: Request) -> UploadedFile:
    scheme, _, credential = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and _signer(request).token_owner(credential.strip()) is not None:
        pass
    else:
        require_owner(request)  # an API key works too
    key = _new_key(request.headers.get("x-fal-file-name"))
    await _store_body(request, key, request.headers.get("content-type") or "application/octet-stream")
    return UploadedFile(access_url=_file_url(request, key))


@router.head("/files/{key:path}", include_in_schema=False)
@router.get("/files/{key:path}")
def download(request: Request, key: str, expires: str | None = None, signature: str | None = None) -> FileResponse:
    storage = _storage(request)
    if not _signer(request).verify("get", key, expires, signature) or not isinstance(storage, FileSystemStorage):
        raise Forbidden()
    obj = storage.stat(safe_key(key))
    if obj is None:
        raise NotFound("File not found")
    return FileResponse(storage.path(key), media_type=obj.content_type, filename=key.rsplit("/", 1)[-1])
