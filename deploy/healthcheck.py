"""The image's health check, for both roles: `python healthcheck.py [api|worker]` exits 0 when healthy.

api: GET /readyz on the port `lipsync api` was given (Redis answers). worker: a worker on this host (the
container's or pod's hostname) has a current liveness beat in Redis, which the worker refreshes from its own
thread while it loads, idles or runs a job. With no argument, the role is read from the running
`lipsync api|worker` process, so one Dockerfile HEALTHCHECK serves both.
"""

from __future__ import annotations

import socket
import sys
import urllib.request
from pathlib import Path


def running_role() -> tuple[str, list[str]]:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = [a.decode() for a in cmdline.read_bytes().split(b"\0") if a]
        except OSError:
            continue
        for i, arg in enumerate(argv[:-1]):
            if Path(arg).name == "lipsync" and argv[i + 1] in ("api", "worker"):
                return argv[i + 1], argv[i + 2:]
    sys.exit("no `lipsync api` or `lipsync worker` process here")


def api_ready(args: list[str]) -> None:
    port = args[args.index("--port") + 1] if "--port" in args else "8000"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
        assert response.status == 200


def worker_alive() -> None:
    import redis
    from rq import Worker

    from lipsync.contract.settings import get_settings
    from lipsync.queue.jobs import JobStore

    connection = redis.Redis.from_url(get_settings().redis_url, socket_timeout=5)
    alive = set(JobStore(connection).live_workers())
    here = socket.gethostname()
    if not any(w.name in alive and w.hostname == here for w in Worker.all(connection=connection)):
        sys.exit(f"no worker on {here} has a current liveness beat")


if __name__ == "__main__":
    role, args = (sys.argv[1], []) if len(sys.argv) > 1 else running_role()
    if role == "api":
        api_ready(args)
    elif role == "worker":
        worker_alive()
    else:
        sys.exit(f"usage: {sys.argv[0]} [api|worker]")
