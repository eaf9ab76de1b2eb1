"""``lipsync serve``: the whole product on one machine with no other set-up, supervised.

Starts a private ``redis-server`` child (data in ``<data dir>/redis``, AOF on) unless ``LIPSYNC_REDIS_URL``
is set, one worker child and one API child, with filesystem storage in ``<data dir>/storage`` unless
``LIPSYNC_STORAGE_DIR`` is set. Then it supervises them:

- a child that exits is started again, after a backoff that doubles from 1 s to 30 s while it keeps dying
  young (each restart is logged); Redis comes back on the same port and AOF folder, so queued requests
  survive, and the requests a dead worker held are retried by the reaper (LIPSYNC_MAX_RUNNER_RETRIES);
- each worker start gets a new name, so a registration restored from the AOF never blocks it;
- SIGTERM / SIGINT stop the API, then the worker (it finishes its job), then Redis (it writes its AOF);
  every child also gets SIGTERM from the kernel if serve itself is killed (no orphans);
- one serve per data folder (a lock file): two Redis servers never share an AOF folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import redis

from lipsync.contract.settings import Settings

log = logging.getLogger("lipsync.serve")

POLL_S = 0.2
BACKOFF_START_S, BACKOFF_MAX_S = 1.0, 30.0
HEALTHY_AFTER_S = 60.0  # a child that ran this long before dying starts again at the first backoff step
STOP_TIMEOUT_S = 30.0
PR_SET_PDEATHSIG = 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: the kernel sends SIGTERM when serve dies, however it dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """One supervised process: how to start it, and its restart backoff."""

    name: str
    make_args: Callable[[], list[str]]  # called at every start (the worker's name changes)
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    backoff_s: float = BACKOFF_START_S
    next_start: float = 0.0
    restarts: int = 0
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        args = self.make_args()
        self._log = self._log or open(self.log_path, "ab")
        # Own session: a terminal's Ctrl-C reaches serve alone, which stops the children in order.
        self.proc = subprocess.Popen(args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_parent, start_new_session=True)
        self.started_at = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.proc.pid)

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def schedule_restart(self, code: int) -> float:
        """Note an exit; returns the backoff before the next start."""
        lived = time.monotonic() - self.started_at
        if lived >= HEALTHY_AFTER_S:
            self.backoff_s = BACKOFF_START_S
        delay = self.backoff_s
        self.backoff_s = min(self.backoff_s * 2, BACKOFF_MAX_S)
        self.next_start = time.monotonic() + delay
        self.restarts += 1
        log.warning("%s (pid %d) exited with %s after %.1f s; restart %d in %.1f s (log: %s)",
                    self.name, self.proc.pid, code, lived, self.restarts, delay, self.log_path)
        self.proc = None
        return delay

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def _wait_for_redis(url: str, child: Child) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if child.exited() is not None:
            raise SystemExit(f"redis-server exited; see {child.log_path}")
        with contextlib.suppress(redis.ConnectionError):
            if client.ping():
                return
        time.sleep(0.05)
    raise SystemExit(f"redis-server did not start in 15 s; see {child.log_path}")


def _lock(data_dir: Path) -> IO[str]:
    handle = open(data_dir / "serve.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"another `lipsync serve` is running on {data_dir}; stop it first") from None
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


class Supervisor:
    def __init__(self, host: str, port: int, data_dir: Path, log_level: str):
        self.data_dir = data_dir
        self.env = dict(os.environ)  # the children's environment: they read their settings from it
        self.env.setdefault("LIPSYNC_STORAGE_DIR", str(data_dir / "storage"))
        self.stopping = False
        self.redis: Child | None = None
        settings = Settings()
        if "redis_url" not in settings.model_fields_set or not settings.redis_url:  # none named: a private one
            self.redis = self._redis_child()
            self.env["LIPSYNC_REDIS_URL"] = self.redis_url
        self.redis_url = self.env["LIPSYNC_REDIS_URL"]
        host_name = socket.gethostname()
        self.worker = Child(
            "worker",
            # New name per start: a killed worker's registration (restored from the AOF) cannot block it.
            lambda: [sys.executable, "-m", "lipsync", "worker", "--log-level", log_level,
                     "--name", f"{host_name}-serve-{uuid.uuid4().hex[:8]}"],
            self.env, data_dir / "worker.log",
        )
        self.api = Child(
            "api",
            lambda: [sys.executable, "-m", "lipsync", "api", "--host", host, "--port", str(port),
                     "--log-level", log_level],
            self.env, data_dir / "api.log",
        )

    def _redis_child(self) -> Child:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (README's set-up installs it), or set LIPSYNC_REDIS_URL")
        folder = self.data_dir / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                "--appendonly", "yes", "--save", ""]
        return Child("redis-server", lambda: args, dict(os.environ), folder / "redis.log")

    def children(self) -> list[Child]:
        return [c for c in (self.redis, self.worker, self.api) if c is not None]

    def _on_signal(self, signum: int, frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        self.stopping = True

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            if self.redis is not None:
                self.redis.start()
                _wait_for_redis(self.redis_url, self.redis)
            self.worker.start()
            self.api.start()
            while not self.stopping:
                self._tick()
                time.sleep(POLL_S)
        finally:
            self.stop()

    def _tick(self) -> None:
        now = time.monotonic()
        for child in self.children():
            if self.stopping:
                return
            code = child.exited()
            if code is not None:
                child.schedule_restart(code)
            if child.proc is None and now >= child.next_start:
                child.start()
                if child is self.redis:
                    _wait_for_redis(self.redis_url, child)
                    log.info("redis-server is back (AOF restored from %s)", self.data_dir / "redis")

    def stop(self) -> None:
        """The API first (no new requests), then the worker (finishes its job), Redis last (writes its AOF)."""
        for child in (self.api, self.worker, self.redis):
            if child is not None:
                child.stop()


def serve(host: str, port: int, data_dir: Path, log_level: str) -> None:
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(data_dir)
    try:
        supervisor = Supervisor(host, port, data_dir, log_level)
        base = f"http://{host}:{port}"
        print(
            f"lipsync is starting on {base}  (redis {supervisor.redis_url}, storage {supervisor.env['LIPSYNC_STORAGE_DIR']}, "
            f"logs {data_dir}/api.log, {data_dir}/worker.log)\n\n"
            "Try it with the official Python client:\n\n"
            "    import fal_client\n"
            "    from lipsync.client import point_fal_client\n"
            f"    point_fal_client({base!r})\n"
            '    client = fal_client.SyncClient(key="local")  # any key while LIPSYNC_API_KEYS is unset\n'
            '    result = client.subscribe("pipio/lipsync", arguments={\n'
            '        "video": client.upload_file("face.mp4"),\n'
            '        "audio": client.upload_file("speech.wav")}, with_logs=True, on_queue_update=print)\n'
            '    print(result["video"]["url"])\n',
            flush=True,
        )
        supervisor.run()
    finally:
        lock.close()
