"""File storage routes: the upload flows of both official clients, and signed downloads.

- JS: ``POST /storage/upload/initiate`` → ``PUT upload_url`` (signed, no auth header) → use ``file_url``;
  over 90 MB ``initiate-multipart`` → ``PUT {upload_url}/{n}`` per 10 MB part → ``POST {upload_url}/complete``.
- Python: ``POST /storage/auth/token`` → ``POST /files/upload`` with the token → use ``access_url``; over
  100 MB ``POST /files/upload/multipart`` → ``PUT {access_url}/multipart/{id}/{n}`` → ``…/complete``.
  Its fallback is the JS single-PUT flow with ``storage_type=gcs``.
- Everyone: ``GET /files/<expires>/<signature>/<key>`` (filesystem storage; S3 URLs point at the bucket).
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

from lipsync.server.auth import require_owner
from lipsync.server.errors import Forbidden, NotFound, Unauthorized
from lipsync.server.http import base_url_of
from lipsync.server.protocol import (
    ERROR_RESPONSES,
    STORAGE_ERROR_RESPONSES,
    MultipartComplete,
    UploadedFile,
    UploadInitiateRequest,
    UploadInitiateResponse,
    UploadTokenResponse,
)
from lipsync.server.uploads import MultipartUploads, store_body
from lipsync.storage import FileSystemStorage, Signer, Storage, safe_file_name, safe_key
from lipsync.storage.filesystem import signed_file_url

router = APIRouter(tags=["storage"], responses=ERROR_RESPONSES | STORAGE_ERROR_RESPONSES)

UPLOAD_URL_TTL_S = 3600
MIN_FILES_TTL_S = 60  # the shortest life a lifecycle header may ask for
TOKEN_TTL_S = 3600
REDIRECT_TTL_S = 600
# A part number that is not an integer matches no PUT route, only other methods' routes on that path.
NON_INT_PART: dict[int | str, dict] = {405: {"description": "Part number is not an integer"}}


def _storage(request: Request) -> Storage:
    return request.app.state.storage


def _signer(request: Request) -> Signer:
    return request.app.state.signer


def _multipart(request: Request) -> MultipartUploads:
    return request.app.state.multipart


def _limit(request: Request) -> int:
    return request.app.state.settings.max_input_bytes


UPLOADS = "uploads/"


def _new_key(file_name: str | None) -> str:
    return f"{UPLOADS}{uuid.uuid4().hex}/{safe_file_name(file_name)}"


def _file_url(request: Request, key: str) -> str:
    """Always our own URL (whatever the backend): the API recognises it when it comes back as an input.

    An ``X-Fal-Object-Lifecycle`` (JS initiate) or ``…-Preference`` (Python) header with
    ``expiration_duration_seconds`` shortens the file's life, within [MIN_FILES_TTL_S, upload_ttl_s]: the URL
    expires then, and retention deletes the file then.
    """
    settings = request.app.state.settings
    ttl_s = _lifecycle_ttl(request, settings.upload_ttl_s)
    if ttl_s:
        request.app.state.service.store.expire_files_at(f"upload:{key}", [key], time.time() + ttl_s)
    return signed_file_url(_signer(request), base_url_of(request), key, min(ttl_s or settings.url_ttl_s, settings.url_ttl_s))


def _lifecycle_ttl(request: Request, most_s: int) -> int:
    for name in ("x-fal-object-lifecycle", "x-fal-object-lifecycle-preference"):
        value = request.headers.get(name)
        if value is None:
            continue
        try:
            seconds = json.loads(value, parse_constant=lambda c: None).get("expiration_duration_seconds")
        except (ValueError, AttributeError, RecursionError):
            continue  # hosted ignores a preference it cannot read
        if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds > 0:
            return int(min(max(seconds, MIN_FILES_TTL_S), most_s))
    return 0


def _token_or_key(request: Request) -> str:
    """Python's upload calls carry the token from /storage/auth/token; an API key works as well."""
    scheme, _, credential = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer":
        owner = _signer(request).token_owner(credential.strip())
        if owner is not None:
            return owner
    try:
        return require_owner(request)
    except Unauthorized:
        raise Unauthorized("Unauthorized: missing or invalid upload token or API key") from None


def _check(request: Request, action: str, key: str, expires: str | None, signature: str | None) -> None:
    if not _signer(request).verify(action, key, expires, signature):
        raise Forbidden()


# --- JS flow (and Python's fallback) ------------------------------------------------------------------


@router.post("/storage/upload/initiate", response_model=UploadInitiateResponse)
def initiate_upload(
    request: Request, body: UploadInitiateRequest, owner: Annotated[str, Depends(require_owner)]
) -> UploadInitiateResponse:
    key = _new_key(body.file_name)
    query = _signer(request).query("put", key, UPLOAD_URL_TTL_S)
    return UploadInitiateResponse(  # key starts with uploads/: the PUT route below matches only those
        upload_url=f"{base_url_of(request)}/storage/upload/{key}?{query}", file_url=_file_url(request, key)
    )


@router.post("/storage/upload/initiate-multipart", response_model=UploadInitiateResponse)
def initiate_multipart(
    request: Request, body: UploadInitiateRequest, owner: Annotated[str, Depends(require_owner)]
) -> UploadInitiateResponse:
    key = _new_key(body.file_name)
    upload_id = _multipart(request).begin(key, body.content_type)
    query = _signer(request).query("put", f"multipart/{upload_id}", UPLOAD_URL_TTL_S)
    return UploadInitiateResponse(
        upload_url=f"{base_url_of(request)}/storage/upload/multipart/{upload_id}?{query}",
        file_url=_file_url(request, key),
    )


@router.put("/storage/upload/multipart/{upload_id}/{number:int}", responses=NON_INT_PART)
async def put_js_part(
    request: Request, upload_id: str, number: int, expires: str | None = None, signature: str | None = None
) -> JSONResponse:
    _check(request, "put", f"multipart/{upload_id}", expires, signature)
    etag = await _multipart(request).put_part(request, upload_id, number)
    return JSONResponse({"partNumber": number, "etag": etag})


@router.post("/storage/upload/multipart/{upload_id}/complete")
async def complete_js(
    request: Request, upload_id: str, body: MultipartComplete, expires: str | None = None, signature: str | None = None
) -> JSONResponse:
    _check(request, "put", f"multipart/{upload_id}", expires, signature)
    await run_in_threadpool(_multipart(request).complete, upload_id, [p.partNumber for p in body.parts])
    return JSONResponse({})


@router.put("/storage/upload/uploads/{rest:path}")
async def put_upload(request: Request, rest: str, expires: str | None = None, signature: str | None = None) -> JSONResponse:
    key = UPLOADS + rest
    _check(request, "put", key, expires, signature)
    content_type = request.headers.get("content-type") or "application/octet-stream"
    await store_body(request, _storage(request), safe_key(key), content_type, _limit(request))
    return JSONResponse({})


# --- Python flow ---------------------------------------------------------------------------------------


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
    _token_or_key(request)
    key = _new_key(request.headers.get("x-fal-file-name"))
    content_type = request.headers.get("content-type") or "application/octet-stream"
    await store_body(request, _storage(request), key, content_type, _limit(request))
    return UploadedFile(access_url=_file_url(request, key))


@router.post("/files/upload/multipart")
def initiate_python_multipart(request: Request) -> JSONResponse:
    _token_or_key(request)
    key = _new_key(request.headers.get("x-fal-file-name"))
    upload_id = _multipart(request).begin(key, request.headers.get("content-type") or "application/octet-stream")
    return JSONResponse({"access_url": _file_url(request, key), "uploadId": upload_id})


def _check_python_session(request: Request, expires: str, signature: str, key: str, upload_id: str) -> None:
    """A part or completion: the caller's token, the file URL's signature, and the session for that file."""
    _token_or_key(request)
    _check(request, "get", key, expires, signature)
    if _multipart(request).key(upload_id) != key:
        raise NotFound("no such multipart upload for this file")


@router.put("/files/{expires}/{signature}/{key:path}/multipart/{upload_id}/{number:int}", responses=NON_INT_PART)
async def put_python_part(
    request: Request, expires: str, signature: str, key: str, upload_id: str, number: int
) -> JSONResponse:
    _check_python_session(request, expires, signature, key, upload_id)
    etag = await _multipart(request).put_part(request, upload_id, number)
    return JSONResponse({}, headers={"ETag": etag})


@router.post("/files/{expires}/{signature}/{key:path}/multipart/{upload_id}/complete")
async def complete_python(
    request: Request, expires: str, signature: str, key: str, upload_id: str, body: MultipartComplete
) -> JSONResponse:
    _check_python_session(request, expires, signature, key, upload_id)
    await run_in_threadpool(_multipart(request).complete, upload_id, [p.partNumber for p in body.parts])
    return JSONResponse({})


# --- downloads -----------------------------------------------------------------------------------------


@router.head("/files/{expires}/{signature}/{area}/{folder}/{name}", include_in_schema=False)
@router.get(
    "/files/{expires}/{signature}/{area}/{folder}/{name}",
    response_class=FileResponse,
    responses={200: {"description": "The file's bytes", "content": {"*/*": {}}}, 307: {"description": "Object store"}},
)
def download(request: Request, expires: str, signature: str, area: str, folder: str, name: str) -> Response:
    """Serve a file from filesystem storage; for an object store, redirect to a short-lived presigned URL.

    Every key we make has three parts (``uploads|results|inputs / <id> / <name>``); the route says so.
    """
    key = f"{area}/{folder}/{name}"
    storage = _storage(request)
    _check(request, "get", key, expires, signature)
    obj = storage.stat(safe_key(key))
    if obj is None:
        raise NotFound("File not found")
    if not isinstance(storage, FileSystemStorage):
        return RedirectResponse(storage.url(key, base_url=base_url_of(request), ttl_s=REDIRECT_TTL_S), status_code=307)
    # Uploads carry the uploader's content type: never let a browser sniff or run them on our origin.
    headers = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}
    return FileResponse(storage.path(key), media_type=obj.content_type, filename=key.rsplit("/", 1)[-1], headers=headers)
