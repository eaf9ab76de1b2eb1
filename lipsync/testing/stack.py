"""Real processes on loopback for tests and benchmarks: redis-server, the API under uvicorn, RQ workers.

Every process runs on 127.0.0.1 on a free port, logs to a file a failing test prints, and is killed at the
end. Nothing here is a mock: callers talk HTTP to the real API, which talks to a real Redis, which real
workers serve (with ``lipsync.testing.pipelines:reencode`` unless told otherwise).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

API_KEYS = {"alice": "secret-alice", "bob": "secret-bob"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            self.popen.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(10)
        if self.alive():
            self.popen.kill()
            self.popen.wait(10)


def spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Proc:
    log_path = log_dir / f"{name}.log"
    fh = open(log_path, "ab")
    popen = subprocess.Popen(args, env=env, stdout=fh, stderr=subprocess.STDOUT)
    return Proc(name, popen, log_path)


def start_redis(workdir: Path, *, appendonly: bool = False, port: int | None = None) -> tuple[Proc, str]:
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    args = [
        shutil.which("redis-server") or "redis-server",
        "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
        "--save", "", "--appendonly", "yes" if appendonly else "no",
    ]
    proc = spawn(f"redis-{port}", args, dict(os.environ), workdir)
    client = redis.Redis(port=port)

    def ready() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_until(ready, 10, "redis-server")
    return proc, f"redis://127.0.0.1:{port}/0"


@dataclass
class Stack:
    """Redis + API + workers, sharing one environment (the LIPSYNC_* settings)."""

    workdir: Path
    env: dict[str, str]
    redis_proc: Proc
    redis_url: str
    api: Proc | None = None
    base_url: str = ""
    workers: list[Proc] = field(default_factory=list)

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def start_api(self, *extra: str, scheme: str = "http", port: int | None = None) -> str:
        port = port or free_port()
        self.api = spawn(
            f"api-{port}",
            [sys.executable, "-m", "lipsync", "api", "--host", "127.0.0.1", "--port", str(port), *extra],
            self.env,
            self.workdir,
        )
        self.base_url = f"{scheme}://127.0.0.1:{port}"
        cafile = self.env.get("SSL_CERT_FILE")
        verify = ssl.create_default_context(cafile=cafile) if cafile else True

        def ready() -> bool:
            if not self.api.alive():
                raise RuntimeError(f"API exited:\n{self.api.log()}")
            try:
                return httpx.get(f"{self.base_url}/readyz", verify=verify, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 20, "the API")
        return self.base_url

    def restart_api(self) -> None:
        """Kill the API with SIGKILL and start it again on the same port."""
        port = int(self.base_url.rsplit(":", 1)[1])
        self.api.kill(signal.SIGKILL)
        self.start_api(port=port)

    def restart_redis(self, sig: int = signal.SIGKILL) -> None:
        """Kill redis-server and start it again on the same port and data folder."""
        port = int(self.redis_url.rsplit(":", 1)[1].split("/")[0])
        appendonly = "yes" in " ".join(self.redis_proc.popen.args[self.redis_proc.popen.args.index("--appendonly") :][:2])
        self.redis_proc.kill(sig)
        self.redis_proc, _ = start_redis(self.workdir / "redis", appendonly=appendonly, port=port)

    def start_worker(self, name: str, timeout: float = 60) -> Proc:
        proc = spawn(name, [sys.executable, "-m", "lipsync", "worker", "--name", name], self.env, self.workdir)
        from rq import Worker

        def ready() -> bool:
            if not proc.alive():
                raise RuntimeError(f"worker exited:\n{proc.log()}")
            # idle (or busy): past RQ's bootstrap, which registers first and then writes its state; a test that
            # stops Redis right after start must not catch the worker in between
            return any(w.name == name and w.get_state() in ("idle", "busy") for w in Worker.all(connection=self.redis))

        wait_until(ready, timeout, f"worker {name}")
        self.workers.append(proc)
        return proc

    def logs(self) -> str:
        procs = [self.redis_proc, self.api, *self.workers]
        return "\n".join(f"===== {p.name}\n{p.log()[-4000:]}" for p in procs if p is not None)

    def stop(self) -> None:
        for proc in [*self.workers, self.api, self.redis_proc]:
            if proc is not None:
                proc.kill(signal.SIGTERM if proc is self.api else signal.SIGKILL)


def make_stack(workdir: Path, *, appendonly: bool = False, **settings: str) -> Stack:
    redis_proc, redis_url = start_redis(workdir / "redis", appendonly=appendonly)
    env = dict(os.environ)
    env.update(
        {
            "LIPSYNC_REDIS_URL": redis_url,
            "LIPSYNC_STORAGE_DIR": str(workdir / "storage"),
            "LIPSYNC_PIPELINE": "lipsync.testing.pipelines:reencode",
            "LIPSYNC_API_KEYS": ",".join(f"{k}:{v}" for k, v in API_KEYS.items()),
            "LIPSYNC_HEARTBEAT_INTERVAL_S": "0.5",
            "LIPSYNC_HEARTBEAT_TTL_S": "2",
            "LIPSYNC_REAPER_INTERVAL_S": "0.5",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({f"LIPSYNC_{k.upper()}": v for k, v in settings.items()})
    return Stack(workdir=workdir, env=env, redis_proc=redis_proc, redis_url=redis_url)


def percentile_ms(values: list[float], q: float) -> float:
    """The q-quantile of durations in seconds, in milliseconds (nan when there are none)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000
