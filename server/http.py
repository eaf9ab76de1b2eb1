"""Small HTTP helpers the routers share: base URL, bounded JSON bodies, and the protocol's error replies."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from contract.errors import LipsyncError
from contract.schema import InputInvalid
from server.errors import PayloadTooLarge, TooManyRequests


def base_url_of(request: Request) -> str:
    """``LIPSYNC_PUBLIC_URL`` when set, else the request's own base URL."""
    configured = request.app.state.settings.public_url
    return (configured or str(request.base_url)).rstrip("/")


def error_response(err: LipsyncError, *, request_id: str | None = None, status_code: int | None = None) -> JSONResponse:
    headers = {"X-Fal-Error-Type": err.error_type}
    if request_id:
        headers["X-Fal-Request-Id"] = request_id
    code = status_code or err.status_code
    if isinstance(err, TooManyRequests):
        headers["Retry-After"] = str(err.retry_after_s)
    if code == 504:
        headers["X-Fal-Request-Timeout-Type"] = "user"  # tells both clients not to retry
    return JSONResponse(err.to_body(), status_code=code, headers=headers)


def validation_response(detail: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=422)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (checked before and while reading)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json_body(request: Request, limit: int) -> Any:
    raw = await read_body(request, limit)
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputInvalid([{"loc": ["body"], "msg": f"body is not valid JSON: {exc}", "type": "json_invalid"}]) from None
