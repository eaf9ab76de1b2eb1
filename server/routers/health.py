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
    """Ready when Redis answers; also says how many workers are registered and how many are busy."""
    try:
        connection = request.app.state.redis
        connection.ping()
        workers = Worker.all(connection=connection)
    except Exception as exc:  # any failure to reach Redis means not ready
        return JSONResponse({"status": "unavailable", "detail": f"redis: {exc}"}, status_code=503)
    busy = sum(1 for w in workers if w.get_state() == "busy")
    return JSONResponse({"status": "ok", "workers": len(workers), "busy_workers": busy})


@router.get("/.well-known/jwks.json")
def jwks(request: Request) -> dict:
    """The public key receivers verify webhook signatures with."""
    return request.app.state.webhook_signer.jwks()


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
