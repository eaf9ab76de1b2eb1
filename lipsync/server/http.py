"""Small HTTP helpers the routers share: base URL, bounded JSON bodies, and the protocol's error replies."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from lipsync.contract.errors import LipsyncError
from lipsync.contract.schema import InputInvalid
from lipsync.server.errors import BodyTimeout, PayloadTooLarge


def base_url_of(request: Request) -> str:
    """``LIPSYNC_PUBLIC_URL`` when set, else the request's own base URL."""
    configured = request.app.state.settings.public_url
    return (configured or str(request.base_url)).rstrip("/")


def error_response(err: LipsyncError, *, request_id: str | None = None, status_code: int | None = None) -> JSONResponse:
    headers = {"X-Fal-Error-Type": err.error_type}
    if request_id:
        headers["X-Fal-Request-Id"] = request_id
    code = status_code or err.status_code
    retry_after_s = getattr(err, "retry_after_s", None)  # a live refusal; a stored request's error has none
    if retry_after_s:
        headers["Retry-After"] = str(retry_after_s)
    if code == 504:
        # "user": the caller's own deadline; both clients never retry it. "server": our limit; they may.
        headers["X-Fal-Request-Timeout-Type"] = err.timeout_type or "server"
    return JSONResponse(err.to_body(), status_code=code, headers=headers)


def validation_response(detail: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=422)


async def iter_body(request: Request) -> AsyncIterator[bytes]:
    """The request body's chunks; a client that sends nothing for ``body_idle_timeout_s`` gets a 408."""
    idle_s = request.app.state.settings.body_idle_timeout_s
    chunks = request.stream()
    while True:
        try:
            chunk = await asyncio.wait_for(anext(chunks), idle_s)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise BodyTimeout(f"The request body sent nothing for {idle_s:g} s") from None
        yield chunk


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (checked before and while reading)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in iter_body(request):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


MAX_JSON_DEPTH = 64  # the schema nests 3 levels; deeper bodies are refused before the parser recurses


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _too_deep(raw: bytes, limit: int) -> bool:
    """True when brackets nest deeper than ``limit`` (brackets inside strings do not count).

    No recursion and no Python loop per byte: a body of ordinary size and few brackets (data URIs hold
    none) is passed at once; otherwise strings are cut out and the depth is a cumulative sum.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    import numpy as np

    outside_strings = _JSON_STRING.sub(b"", raw) if b'"' in raw else raw
    brackets = np.frombuffer(outside_strings.translate(None, _NOT_BRACKETS), dtype=np.uint8)
    steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1)
    return int(np.cumsum(steps).max(initial=0)) > limit


def parse_json(raw: bytes) -> Any:
    """Strict JSON: no NaN/Infinity, no float that overflows to inf, ints within Python's digit limit,
    nesting at most ``MAX_JSON_DEPTH``. Anything else is a 422 on ``body`` (never a 500)."""
    if _too_deep(raw, MAX_JSON_DEPTH):
        msg = f"body is nested deeper than {MAX_JSON_DEPTH} levels"
        raise InputInvalid([{"loc": ["body"], "msg": msg, "type": "json_invalid"}])
    try:
        return json.loads(raw, parse_float=_finite_float, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        msg = f"body is not valid JSON: {str(exc)[:200]}"
        raise InputInvalid([{"loc": ["body"], "msg": msg, "type": "json_invalid"}]) from None


async def read_json_body(request: Request, limit: int) -> Any:
    raw = await read_body(request, limit)
    if not raw.strip():
        return {}
    return parse_json(raw)
