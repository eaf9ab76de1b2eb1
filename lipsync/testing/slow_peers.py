"""Slow and odd peers for the tests and the fault scripts: a TCP server that trickles its answer, an HTTP
webhook receiver that records arrivals, and a small tmpfs that can really fill up."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Trickler:
    """Reads a request and answers ``HTTP/1.1 200 OK`` then one byte every 0.3 s (30 s): every read is
    quick, so only a deadline for the whole exchange stops it."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.calls = 0
        self.open = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        self.calls += 1
        self.open += 1
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            for _ in range(100):
                conn.sendall(b"X")
                time.sleep(0.3)
        except OSError:
            pass
        finally:
            self.open -= 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


class Receiver:
    """A webhook receiver answering ``code``; ``arrivals`` holds when each call came (time.monotonic),
    ``received`` the same times each with the body that came then."""

    def __init__(self, code: int = 200):
        receiver = self
        self.arrivals: list[float] = []
        self.received: list[tuple[float, bytes]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                now = time.monotonic()
                receiver.received.append((now, body))
                receiver.arrivals.append(now)
                self.send_response(code)
                if 300 <= code < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def mount_small_disk(path: Path, size: str = "4m") -> bool:
    """Mount a tmpfs of ``size`` at ``path`` (root only); False when that is not possible here."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode == 0


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Write zeros into ``disk`` until it is full; returns the file to delete to free it again."""
    filler = disk / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    return filler
