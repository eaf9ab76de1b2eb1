"""The API application: ``create_app(settings)`` wires Redis, storage, auth and the routers.

Torch-free by design (the worker owns the model), so the API imports and starts in well under a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import redis
import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from prometheus_client import CollectorRegistry

from lipsync.contract.errors import LipsyncError, storage_error
from lipsync.contract.schema import InputInvalid
from lipsync.contract.settings import Settings, get_settings
from lipsync.contract.webhook_signing import WebhookSigner
from lipsync.server.auth import KeyRing
from lipsync.server.http import error_response, validation_response
from lipsync.server.metrics import HttpMetrics, JobCollector
from lipsync.server.middleware import ErrorShield, install_cors
from lipsync.server.openapi import install_openapi
from lipsync.server.proxy import FalProxyMiddleware
from lipsync.server.routers import health, playground, queue, storage as storage_routes
from lipsync.server.service import QueueService
from lipsync.server.uploads import MultipartUploads
from lipsync.storage import make_signer, make_storage
from lipsync.queue.housekeeping import Housekeeper

log = logging.getLogger("lipsync.api")

REDIS_RETRY_AFTER_S = 2


async def _housekeep_forever(housekeeper: Housekeeper, multipart: MultipartUploads, settings: Settings) -> None:
    """Reap requests whose worker died or that waited too long; delete expired files (lipsync.queue.housekeeping)
    and abandoned multipart sessions (they live on the API's disk, so only the API sweeps them)."""
    next_sweep = 0.0
    while True:
        await asyncio.to_thread(housekeeper.tick)
        if time.monotonic() >= next_sweep:
            next_sweep = time.monotonic() + settings.retention_interval_s
            removed = await asyncio.to_thread(multipart.sweep, settings.upload_ttl_s)
            if removed:
                log.info("retention: removed %d abandoned multipart upload sessions", removed)
        await asyncio.sleep(settings.reaper_interval_s)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    registry = CollectorRegistry()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        connection = redis.Redis.from_url(settings.redis_url, health_check_interval=30)
        # Reads block for up to a second (status streams, sync runs): the socket timeout must outlast that.
        aredis = aioredis.Redis.from_url(settings.redis_url, health_check_interval=30, socket_timeout=10)
        signer = make_signer(settings)
        storage = make_storage(settings, signer)
        service = QueueService(settings, connection, storage, signer)
        registry.register(
            JobCollector(service.store, lambda: {name: q.count for name, q in service.queues.items()})
        )
        app.state.settings = settings
        app.state.redis, app.state.aredis = connection, aredis
        app.state.signer, app.state.storage, app.state.service = signer, storage, service
        app.state.multipart = MultipartUploads(settings.storage_dir, storage, settings.max_input_bytes)
        app.state.webhook_signer = WebhookSigner.from_settings(settings.webhook_signing_key, settings.storage_dir)
        app.state.keys = KeyRing.load(settings.api_keys, settings.api_keys_file)
        app.state.metrics_registry = registry
        if app.state.keys.open:
            log.warning("no API keys configured (LIPSYNC_API_KEYS): the API is open to anyone who can reach it")
        housekeeper = Housekeeper(service.store, storage, settings, dispatcher=service.dispatcher)
        reaper = asyncio.create_task(_housekeep_forever(housekeeper, app.state.multipart, settings))
        try:
            yield
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            await aredis.aclose()
            connection.close()

    app = FastAPI(
        title="lipsync",
        description="Self-hosted pipio/lipsync behind fal's queue protocol.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings

    @app.exception_handler(LipsyncError)
    async def _lipsync_error(request: Request, exc: LipsyncError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(InputInvalid)
    async def _invalid_input(request: Request, exc: InputInvalid) -> JSONResponse:
        return validation_response(exc.detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Routing's own 404/405 in the same shape as every other error, with its headers (Allow).
        error_type = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return JSONResponse(
            {"detail": exc.detail, "error_type": error_type}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(redis.RedisError)
    async def _redis_down(request: Request, exc: redis.RedisError) -> JSONResponse:
        # Redis holds every request's state: while it is unreachable the API is unavailable, not broken.
        log.warning("redis unavailable on %s %s: %s", request.method, request.url.path, exc)
        body = {"detail": "The queue is unavailable for a moment; retry shortly", "error_type": "service_unavailable"}
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(REDIS_RETRY_AFTER_S)})

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # Ordinary (a closed tab, a cancelled upload): one line, no traceback; nobody reads the answer.
        log.info("client disconnected during %s %s", request.method, request.url.path)
        return Response(status_code=499)

    @app.exception_handler(OSError)
    async def _storage_failed(request: Request, exc: OSError) -> JSONResponse:
        # The API writes only to storage (uploads, data URIs, multipart parts): a full or failing disk is a
        # typed 507/503 with Retry-After, never a 500, and the message names no server path.
        err = storage_error(exc, "The file could not be stored")
        log.warning("storage write failed on %s %s: %s", request.method, request.url.path, exc)
        return error_response(err)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "Internal server error", "error_type": "internal_error"}, status_code=500)

    install_openapi(app, settings)
    app.include_router(health.router)
    app.include_router(playground.router)
    app.include_router(storage_routes.router)
    app.include_router(queue.router)
    app.include_router(queue.submit_router(list(settings.apps)))
    app.add_middleware(ErrorShield)
    app.add_middleware(HttpMetrics, registry=registry)
    app.add_middleware(FalProxyMiddleware, path=settings.proxy_path)
    install_cors(app, settings.cors_origins)  # outermost: preflights never reach auth or routing
    return app
