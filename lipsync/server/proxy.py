"""fal's JS proxy form (reference/queue-protocol.md §10.1): ``proxyUrl`` with ``when: "always"``.

The JS client then sends every request to one URL with the real target in ``x-fal-target-url``. This ASGI
middleware rewrites such a request, before routing, into the request it stands for: the queue and REST hosts
map to our root, the sync host to ``/run``. Only fal's own hosts are accepted: this is no open proxy.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

TARGET_HEADER = b"x-fal-target-url"
HOST_PREFIXES = {
    "queue.fal.run": "",
    "rest.fal.ai": "",
    "rest.alpha.fal.ai": "",
    "v3.fal.media": "",
    "fal.run": "/run",
}


class FalProxyMiddleware:
    def __init__(self, app: ASGIApp, path: str):
        self.app = app
        self.path = path.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].rstrip("/") == self.path:
            target = dict(scope["headers"]).get(TARGET_HEADER)
            if target is not None:
                rewritten = self._rewrite(scope, target.decode("latin-1"))
                if rewritten is None:
                    await _refuse(send)
                    return
                scope = rewritten
        await self.app(scope, receive, send)

    @staticmethod
    def _rewrite(scope: Scope, target: str) -> Scope | None:
        parts = urlsplit(target)
        prefix = HOST_PREFIXES.get(parts.hostname or "")
        if parts.scheme != "https" or prefix is None:
            return None
        path = prefix + (parts.path or "/")
        return {**scope, "path": path, "raw_path": path.encode(), "query_string": parts.query.encode()}


async def _refuse(send: Send) -> None:
    body = b'{"detail":"x-fal-target-url must point at a fal host","error_type":"bad_request"}'
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
