"""``lipsync serve``: the whole product on one machine with no other set-up.

Starts a private ``redis-server`` child (data in ``<data dir>/redis``, AOF on) unless ``LIPSYNC_REDIS_URL``
is set, one worker child process, and the API in this process, with filesystem storage in
``<data dir>/storage`` unless ``LIPSYNC_STORAGE_DIR`` is set. Children are stopped when the API stops.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _child(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # a worker finishes its job; redis-server writes its AOF
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_for_redis(url: str, proc: subprocess.Popen, log: Path) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"redis-server exited; see {log}")
        with contextlib.suppress(redis.ConnectionError):
            if client.ping():
                return
        time.sleep(0.05)
    raise SystemExit(f"redis-server did not start in 15 s; see {log}")


@contextlib.contextmanager
def _redis(data_dir: Path, env: dict[str, str]) -> Iterator[str]:
    if os.environ.get("LIPSYNC_REDIS_URL"):
        yield os.environ["LIPSYNC_REDIS_URL"]
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (README's set-up installs it), or set LIPSYNC_REDIS_URL")
    folder = data_dir / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
            "--appendonly", "yes", "--save", ""]
    url = f"redis://127.0.0.1:{port}/0"
    with _child(args, env, folder / "redis.log") as proc:
        _wait_for_redis(url, proc, folder / "redis.log")
        yield url


def serve(host: str, port: int, data_dir: Path, log_level: str) -> None:
    import uvicorn

    from contract.settings import Settings
    from server.app import create_app

    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("LIPSYNC_STORAGE_DIR", str(data_dir / "storage"))
    with _redis(data_dir, env) as redis_url:
        env["LIPSYNC_REDIS_URL"] = redis_url
        worker_log = data_dir / "worker.log"
        worker_args = [sys.executable, "-m", "lipsync", "worker", "--name", f"{socket.gethostname()}-serve-0",
                       "--log-level", log_level]
        with _child(worker_args, env, worker_log):
            settings = Settings(redis_url=redis_url, storage_dir=Path(env["LIPSYNC_STORAGE_DIR"]))
            base = f"http://{host}:{port}"
            print(
                f"lipsync is starting on {base}  (redis {redis_url}, storage {settings.storage_dir}, "
                f"worker log {worker_log})\n\n"
                "Try it with the official Python client:\n\n"
                "    import fal_client\n"
                "    from lipsync.fal_compat import point_fal_client\n"
                f"    point_fal_client({base!r})\n"
                '    client = fal_client.SyncClient(key="local")  # any key while LIPSYNC_API_KEYS is unset\n'
                '    result = client.subscribe("pipio/lipsync", arguments={\n'
                '        "video": client.upload_file("face.mp4"),\n'
                '        "audio": client.upload_file("speech.wav")}, with_logs=True, on_queue_update=print)\n'
                '    print(result["video"]["url"])\n',
                flush=True,
            )
            uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level.lower())
