"""``lipsync serve`` as a real child process, for tests/test_supervisor.py and scripts/fault_recovery.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from lipsync.testing.stack import free_port, wait_until

if TYPE_CHECKING:
    import psutil


class Serve:
    """``settings`` override the tests' short heartbeat and reaper periods (LIPSYNC_<NAME>)."""

    def __init__(self, data_dir: Path, port: int | None = None, **settings: str):
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIPSYNC_")}
        env.update({"LIPSYNC_PIPELINE": "lipsync.testing.pipelines:reencode", "LIPSYNC_HEARTBEAT_INTERVAL_S": "0.5",
                    "LIPSYNC_HEARTBEAT_TTL_S": "2", "LIPSYNC_REAPER_INTERVAL_S": "0.5", "PYTHONUNBUFFERED": "1"})
        env.update({f"LIPSYNC_{k.upper()}": v for k, v in settings.items()})
        self.log = data_dir.parent / f"serve-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lipsync", "serve", "--port", str(self.port), "--data-dir", str(data_dir)],
            env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def ready(self, workers: int = 1) -> None:
        def check() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(self.output())
            try:
                return httpx.get(f"{self.base}/readyz", timeout=1).json().get("workers") == workers
            except (httpx.HTTPError, ValueError):
                return False

        wait_until(check, 90, "lipsync serve")

    def child(self, word: str) -> "psutil.Process":
        import psutil  # a test dependency: only these two helpers need it

        for proc in psutil.Process(self.proc.pid).children(recursive=True):
            if word in " ".join(proc.cmdline()):
                return proc
        raise LookupError(word)

    def descendants(self) -> "list[psutil.Process]":
        import psutil

        return psutil.Process(self.proc.pid).children(recursive=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
