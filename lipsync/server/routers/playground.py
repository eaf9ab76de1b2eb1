"""The playground: a small browser page that builds its form from /openapi.json and drives the queue API.

Static files only (``lipsync/server/playground/``: plain HTML, CSS and JS, no CDN, nothing fetched from elsewhere),
plus one small JSON the page needs and cannot read from OpenAPI: which apps are served and whether an API key
is required. Everything the page does goes through the public API (uploads, submit, SSE status, cancel), so it
is also a live example of that API.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

ASSETS = Path(__file__).resolve().parents[1] / "playground"
NO_CACHE = {"Cache-Control": "no-cache"}  # small files; a new release must not meet an old page

router = APIRouter(tags=["playground"], include_in_schema=False)


@router.get("/")
@router.get("/playground")
def page() -> FileResponse:
    return FileResponse(ASSETS / "index.html", media_type="text/html", headers=NO_CACHE)


@router.get("/playground/config.json")
def config(request: Request) -> dict:
    return {"apps": list(request.app.state.settings.apps), "auth_required": not request.app.state.keys.open}


@router.get("/playground/app.js")
def script() -> FileResponse:
    return FileResponse(ASSETS / "app.js", media_type="text/javascript", headers=NO_CACHE)


@router.get("/playground/style.css")
def style() -> FileResponse:
    return FileResponse(ASSETS / "style.css", media_type="text/css", headers=NO_CACHE)
