"""The queue routes: submit, status (+ SSE stream), result, cancel, and the synchronous run.

URL shapes are fal's (reference/queue-protocol.md §1): ``/{owner}/{alias}[/{path}]`` to submit and
``/{owner}/{alias}/requests/{id}[/status|/status/stream|/cancel]`` for the rest. Synchronous runs live under
``/run/`` so one origin serves both of fal's hosts (§10.3, option b).
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit
from collections.abc import AsyncIterator
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from lipsync.contract.errors import LipsyncError, RequestTimeout
from lipsync.queue.dispatch import PRIORITIES
from lipsync.queue.records import Keys, RequestRecord, RequestStatus, parse_events
from lipsync.contract.schema import InputInvalid
from lipsync.server.auth import require_owner
from lipsync.server.errors import NotFound
from lipsync.server.http import base_url_of, error_response, read_json_body
from lipsync.server.protocol import (
    ERROR_RESPONSES,
    CancelResponse,
    StatusResponse,
    SubmitResponse,
)
from lipsync.server.service import QueueService, SubmitOptions

router = APIRouter(responses=ERROR_RESPONSES)

SSE_KEEPALIVE_S = 15.0  # hosted sends a keep-alive comment every 15 s
SSE_POLL_S = 1.0
MIN_FILES_TTL_S = 60  # how often a stream re-reads its request (queue position) between events
Owner = Annotated[str, Depends(require_owner)]


def get_service(request: Request) -> QueueService:
    return request.app.state.service


Service = Annotated[QueueService, Depends(get_service)]


def _logs_flag(logs: str | None) -> bool:
    # JS sends logs=0|1, Python (httpx) logs=false|true.
    return (logs or "").lower() in {"1", "true", "yes"}


def _header_error(name: str, msg: str) -> InputInvalid:
    return InputInvalid([{"loc": ["header", name], "msg": msg, "type": "value_error"}])


def _webhook(url: str | None) -> str | None:
    if url is None:
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError:
        host = None
    if not url.lower().startswith(("http://", "https://")) or len(url) > 2048 or not host:
        raise InputInvalid(
            [{"loc": ["query", "fal_webhook"], "msg": "must be an http(s) URL with a host", "type": "value_error"}]
        )
    return url


def _priority(value: str | None) -> str:
    """``x-fal-queue-priority``: the JS client sends ``normal`` on every submit; ``low`` waits behind it."""
    priority = (value or "normal").strip().lower()
    if priority not in PRIORITIES:
        raise _header_error("x-fal-queue-priority", "must be normal or low")
    return priority


def _no_retry(value: str | None) -> bool:
    return value is not None and value.strip().lower() not in {"", "0", "false", "no"}


def _files_ttl(value: str | None) -> int:
    """``X-Fal-Object-Lifecycle-Preference: {"expiration_duration_seconds": N}``: how long result files live.

    Honoured within the server's bounds: at least ``MIN_FILES_TTL_S`` (time to fetch the result), at most the
    server's own retention (applied where it is used). 0 = not given.
    """
    if value is None:
        return 0
    try:
        seconds = json.loads(value, parse_constant=lambda c: None).get("expiration_duration_seconds")
    except (ValueError, AttributeError, RecursionError):
        seconds = None
    if seconds is None:
        return 0  # hosted ignores a preference it cannot read; so do we
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise _header_error("x-fal-object-lifecycle-preference", "expiration_duration_seconds must be a positive number")
    return max(MIN_FILES_TTL_S, int(min(seconds, 2**31)))


def _start_timeout(value: str | None) -> float | None:
    """``X-Fal-Request-Timeout``: how long the caller lets the request wait before it starts (clients: > 1 s)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 1 < seconds < float("inf"):
        raise _header_error("x-fal-request-timeout", "must be a number of seconds > 1")
    return seconds


def submit_options(request: Request) -> SubmitOptions:
    headers = request.headers
    return SubmitOptions(
        start_timeout_s=_start_timeout(headers.get("x-fal-request-timeout")),
        priority=_priority(headers.get("x-fal-queue-priority")),
        no_retry=_no_retry(headers.get("x-fal-no-retry")),
        files_ttl_s=_files_ttl(headers.get("x-fal-object-lifecycle-preference")),
    )


def _status_body(service: QueueService, record: RequestRecord, base_url: str, with_logs: bool) -> dict[str, Any]:
    logs = service.store.logs(record.request_id) if with_logs else None
    position = service.queue_position(record) if record.status is RequestStatus.IN_QUEUE else None
    return StatusResponse.build(record, base_url, logs=logs, queue_position=position).to_json()


def _result_response(service: QueueService, record: RequestRecord) -> JSONResponse:
    try:
        body = service.result_body(record)
    except LipsyncError as err:
        return error_response(err, request_id=record.request_id)
    return JSONResponse(body, headers={"X-Fal-Request-Id": record.request_id})


@router.get("/{app_path:path}/requests/{request_id}/status/stream", summary="Stream status (SSE)")
async def stream_status(
    request: Request, app_path: str, request_id: str, owner: Owner, service: Service, logs: str | None = None
) -> StreamingResponse:
    app, _ = service.resolve(app_path)
    record = await run_in_threadpool(service.get, app, owner, request_id)
    events = _stream_events(request, service, record, base_url_of(request), _logs_flag(logs))
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Fal-Request-Id": request_id}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


async def _stream_events(
    request: Request, service: QueueService, record: RequestRecord, base_url: str, with_logs: bool
) -> AsyncIterator[str]:
    """A ``data:`` event per batch of new events (new log lines only) and per change of queue position, a
    keep-alive comment after ``SSE_KEEPALIVE_S`` of silence; closed right after COMPLETED. Lives as long as
    the request does: a Redis outage only delays events."""
    aredis, loop = request.app.state.aredis, asyncio.get_running_loop()
    rid, last, sent_position, last_sent = record.request_id, "0-0", None, loop.time()
    while True:
        try:
            batch = await aredis.xread({Keys.events(rid): last}, block=int(SSE_POLL_S * 1000), count=1000)
            new = parse_events(batch[0][1]) if batch else []
            last = new[-1].id if new else last
            record = await run_in_threadpool(service.store.get, rid)
            if record is None:  # expired while we watched
                return
            queued = record.status is RequestStatus.IN_QUEUE
            position = await run_in_threadpool(service.queue_position, record) if queued else None
        except redis.RedisError:
            new, position = [], sent_position
            await asyncio.sleep(SSE_POLL_S)
        if new or position != sent_position:
            logs = [e.log_entry() for e in new if e.kind == "log"] if with_logs else None
            body = StatusResponse.build(record, base_url, logs=logs, queue_position=position).to_json()
            yield f"data: {json.dumps(body)}\n\n"
            sent_position, last_sent = position, loop.time()
            if record.status is RequestStatus.COMPLETED:
                return
        elif loop.time() - last_sent >= SSE_KEEPALIVE_S:
            yield ": keepalive\n\n"
            last_sent = loop.time()


@router.get("/{app_path:path}/requests/{request_id}/status", summary="Request status", response_model=StatusResponse)
def get_status(
    request: Request, app_path: str, request_id: str, owner: Owner, service: Service, logs: str | None = None
) -> JSONResponse:
    app, _ = service.resolve(app_path)
    record = service.get(app, owner, request_id)
    body = _status_body(service, record, base_url_of(request), _logs_flag(logs))
    code = 200 if record.status is RequestStatus.COMPLETED else 202
    return JSONResponse(body, status_code=code, headers={"X-Fal-Request-Id": request_id})


@router.put("/{app_path:path}/requests/{request_id}/cancel", summary="Cancel a request", response_model=CancelResponse)
def cancel_request(app_path: str, request_id: str, owner: Owner, service: Service) -> JSONResponse:
    app, _ = service.resolve(app_path)
    try:
        record = service.get(app, owner, request_id)
    except LipsyncError:
        return JSONResponse({"status": "NOT_FOUND"}, status_code=404)
    if record.status is RequestStatus.COMPLETED or service.cancel(record) is RequestStatus.COMPLETED:
        return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)
    return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)


@router.get("/{app_path:path}/requests/{request_id}", summary="Request result")
def get_result(app_path: str, request_id: str, owner: Owner, service: Service) -> JSONResponse:
    app, _ = service.resolve(app_path)
    return _result_response(service, service.get(app, owner, request_id))


async def _submit(request: Request, app_path: str, owner: str, service: QueueService, webhook: str | None) -> RequestRecord:
    app, sub_path = service.resolve(app_path)
    if sub_path:
        raise NotFound(f"'{app.app_id}' has no endpoint '{sub_path}'")
    body = await read_json_body(request, service.settings.max_request_bytes)
    return await run_in_threadpool(
        service.submit,
        app,
        owner,
        body,
        base_url=base_url_of(request),
        webhook_url=_webhook(webhook),
        options=submit_options(request),
    )


async def run_sync(request: Request, owner: Owner, service: Service) -> JSONResponse:
    record = await _submit(request, request.url.path.removeprefix("/run/"), owner, service, None)
    rid, last = record.request_id, "0-0"
    aredis = request.app.state.aredis
    deadline = asyncio.get_running_loop().time() + service.settings.sync_timeout_s
    while record.status is not RequestStatus.COMPLETED:
        if await request.is_disconnected():
            await run_in_threadpool(service.cancel, record)  # nobody waits for it: free the GPU
            return JSONResponse({"detail": "client disconnected"}, status_code=499)
        if asyncio.get_running_loop().time() > deadline:
            await run_in_threadpool(service.cancel, record)
            return error_response(RequestTimeout("Synchronous run timed out"), request_id=rid)
        batch = await aredis.xread({Keys.events(rid): last}, block=1000, count=1000)
        if batch:
            last = parse_events(batch[0][1])[-1].id
        record = await run_in_threadpool(service.store.get, rid)
    return await run_in_threadpool(_result_response, service, record)


async def submit(
    request: Request,
    owner: Owner,
    service: Service,
    fal_webhook: Annotated[str | None, Query(description="URL to POST the result to when done")] = None,
) -> JSONResponse:
    record = await _submit(request, request.url.path.lstrip("/"), owner, service, fal_webhook)
    position = await run_in_threadpool(service.queue_position, record)
    body = SubmitResponse(
        **StatusResponse.build(record, base_url_of(request), logs=None).model_dump(
            include={"request_id", "response_url", "status_url", "cancel_url"}
        ),
        queue_position=position,
        gateway_request_id=record.request_id,
    )
    return JSONResponse(body.model_dump(), headers={"X-Fal-Request-Id": record.request_id})


def submit_router(app_ids: list[str]) -> APIRouter:
    """Submit and sync-run routes for each configured app (documented per app in lipsync/server/openapi.py).

    Routes per app, not one catch-all: a POST to any other path is then a plain 404 or 405.
    """
    per_app = APIRouter(responses=ERROR_RESPONSES)
    for app_id in app_ids:
        for path in (f"/{app_id}", f"/{app_id}/{{sub_path:path}}"):
            per_app.add_api_route(path, submit, methods=["POST"], include_in_schema=False)
        per_app.add_api_route(f"/run/{app_id}", run_sync, methods=["POST"], include_in_schema=False)
    return per_app
