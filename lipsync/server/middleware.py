"""ASGI middleware of the API: CORS for browsers, and a last-resort 500 that keeps the connection alive.

Starlette's own last resort (``ServerErrorMiddleware``) answers 500 and then re-raises, so uvicorn drops the
kept-alive connection and the client's *next* request fails too. ``ErrorShield`` sits inside it and answers
the 500 itself; only an error after the response started (a stream) still ends the connection.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("lipsync.api")

# Response headers the clients read (reference/queue-protocol.md §11); browsers hide the rest from scripts.
EXPOSED_HEADERS = [
    "X-Fal-Request-Id",
    "X-Fal-Error-Type",
    "X-Fal-Request-Timeout-Type",
    "X-Fal-Retry-Count",
    "Retry-After",
    "ETag",
]


def cors_origins(setting: str) -> list[str]:
    return [origin.strip().rstrip("/") for origin in setting.split(",") if origin.strip()]


def install_cors(app: FastAPI, setting: str) -> None:
    """CORS on every route: the API, the upload PUTs and the result files. Off when ``setting`` is empty."""
    origins = cors_origins(setting)
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"] if "*" in origins else origins,
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=EXPOSED_HEADERS,
        max_age=600,
    )


class ErrorShield:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            body = json.dumps({"detail": "Internal server error", "error_type": "internal_error"}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 500, "headers": headers})
            await send({"type": "http.response.body", "body": body})
