"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from rq import Worker

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """Ready when Redis answers; also says how many workers are alive (a fresh liveness beat, not a
    registration a killed worker left behind) and how many of those are busy."""
    try:
        connection = request.app.state.redis
        connection.ping()
        alive = set(request.app.state.service.store.live_workers())
        workers = [w for w in Worker.all(connection=connection) if w.name in alive]
        busy = sum(1 for w in workers if w.get_state() == "busy")
    except Exception as exc:  # any failure to reach Redis means not ready
        headers = {"Retry-After": "2"}
        return JSONResponse({"status": "unavailable", "detail": f"redis: {exc}"}, status_code=503, headers=headers)
    return JSONResponse({"status": "ok", "workers": len(alive), "busy_workers": busy})


@router.get("/.well-known/jwks.json")
def jwks(request: Request) -> dict:
    """The public key receivers verify webhook signatures with."""
    return request.app.state.webhook_signer.jwks()


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
