"""Outbound fetches of user URLs: private addresses refused, sizes and times bounded, redirects followed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.conftest import ALICE
from lipsync.testing.stack import wait_until
from lipsync.worker.safe_http import DownloadError, SafeHttp, is_public


class Files(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/big":
            self.send_response(200)
            self.send_header("Content-Length", str(2_000_000))
            self.end_headers()
            self.wfile.write(b"x" * 2_000_000)
        elif self.path == "/endless":  # no length: the limit must trip while streaming
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(1000):
                    self.wfile.write(b"y" * 65536)
            except OSError:
                pass
        elif self.path == "/slow":  # a byte at a time, forever
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"z")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
        elif self.path == "/slow-headers":  # the status line, then a header byte every 0.3 s
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            try:
                for _ in range(100):
                    self.wfile.write(b"X")
                    self.wfile.flush()
                    time.sleep(0.3)
            except OSError:
                pass
            self.close_connection = True
        elif self.path.startswith("/slow-redirect/"):  # each hop takes 0.8 s
            time.sleep(0.8)
            n = int(self.path.rsplit("/", 1)[1])
            self.send_response(302)
            self.send_header("Location", f"/slow-redirect/{n - 1}" if n > 0 else "/small")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path.startswith("/redirect/"):
            n = int(self.path.rsplit("/", 1)[1])
            self.send_response(302)
            self.send_header("Location", f"/redirect/{n - 1}" if n > 0 else "/small")
            self.end_headers()
        elif self.path == "/small":
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.end_headers()
            self.wfile.write(b"hello")
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.mark.parametrize(
    "address,public",
    [("8.8.8.8", True), ("2606:4700::1111", True), ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False),
     ("192.168.1.1", False), ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("::1", False),
     ("fe80::1", False), ("fc00::1", False), ("::ffff:127.0.0.1", False), ("224.0.0.1", False)],
)
def test_address_classes(address, public):
    assert is_public(address) is public


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x", "http://169.254.169.254/latest/meta-data/",
                                 "http://[::1]:9/x", "http://localhost:9/x", "http://10.0.0.1/x"])
def test_private_targets_refused_by_default(url, tmp_path):
    with pytest.raises(DownloadError, match="refused"):
        SafeHttp(allow_private=False, timeout_s=5).download(url, tmp_path / "f", max_bytes=100)


def test_refused_even_when_the_server_is_real(server, tmp_path):
    with pytest.raises(DownloadError, match="refused"):
        SafeHttp(allow_private=False, timeout_s=5).download(f"{server}/small", tmp_path / "f", max_bytes=100)


def test_other_schemes_refused(tmp_path):
    for url in ("file:///etc/passwd", "ftp://example.com/a", "gopher://x"):
        with pytest.raises(DownloadError, match="only http"):
            SafeHttp(allow_private=True, timeout_s=5).download(url, tmp_path / "f", max_bytes=100)


def test_limits_redirects_and_errors(server, tmp_path):
    http = SafeHttp(allow_private=True, timeout_s=2)
    got = http.download(f"{server}/redirect/3", tmp_path / "ok", max_bytes=100)
    assert (tmp_path / "ok").read_bytes() == b"hello" and got.content_type == "video/mp4"
    with pytest.raises(DownloadError, match="redirects"):
        http.download(f"{server}/redirect/9", tmp_path / "f", max_bytes=100)
    with pytest.raises(DownloadError, match="limit"):
        http.download(f"{server}/big", tmp_path / "f", max_bytes=1_000_000)
    with pytest.raises(DownloadError, match="limit"):
        http.download(f"{server}/endless", tmp_path / "f", max_bytes=1_000_000)
    with pytest.raises(DownloadError, match="HTTP 404"):
        http.download(f"{server}/missing", tmp_path / "f", max_bytes=100)
    started = time.monotonic()
    with pytest.raises(DownloadError, match="longer than"):
        http.download(f"{server}/slow", tmp_path / "f", max_bytes=1000)
    assert time.monotonic() - started < 5


def test_loopback_input_url_fails_the_request_with_a_typed_error(stack, server):
    auth = {"Authorization": f"Key {ALICE}"}
    body = {"video": f"{server}/small", "audio": f"{server}/small"}
    submitted = httpx.post(f"{stack.base_url}/pipio/lipsync", json=body, headers=auth).json()
    status = wait_until(
        lambda: (s := httpx.get(submitted["status_url"], headers=auth).json())["status"] == "COMPLETED" and s, 30, "done"
    )
    assert status["error_type"] == "file_download_error" and "refused" in status["error"]
    result = httpx.get(submitted["response_url"], headers=auth)
    assert result.status_code == 422 and result.json()["detail"][0]["loc"] == ["body", "video"]


def test_redirect_from_a_public_host_to_a_private_one_is_refused(server, tmp_path, monkeypatch):
    """Every hop is checked where it connects. Here 127.0.0.2 plays a public host (the policy is told so) that
    redirects to 127.0.0.1, still private: the first hop connects, the second is refused."""
    import lipsync.worker.safe_http as safe_http

    monkeypatch.setattr(safe_http, "is_public", lambda address: address == "127.0.0.2")
    port = server.rsplit(":", 1)[1]
    http = SafeHttp(allow_private=False, timeout_s=5)
    public_files = ThreadingHTTPServer(("127.0.0.2", 0), Files)
    redirector = ThreadingHTTPServer(("127.0.0.2", 0), _RedirectTo(f"http://127.0.0.1:{port}/small"))
    for srv in (public_files, redirector):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        got = http.download(f"http://127.0.0.2:{public_files.server_address[1]}/small", tmp_path / "ok", max_bytes=100)
        assert (tmp_path / "ok").read_bytes() == b"hello" and got.size == 5  # a "public" host is fetched
        with pytest.raises(DownloadError, match="refused"):
            http.download(f"http://127.0.0.2:{redirector.server_address[1]}/x", tmp_path / "f", max_bytes=100)
    finally:
        public_files.shutdown()
        redirector.shutdown()


def _RedirectTo(location: str):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", location)
            self.end_headers()

        def log_message(self, *args):
            pass

    return Handler


@pytest.mark.parametrize("path", ["/slow-headers", "/slow-redirect/4", "/slow"])
def test_one_deadline_covers_headers_redirects_and_body(server, tmp_path, path):
    # Each read is quick, so per-read timeouts never fire: only a deadline for the whole download does.
    http = SafeHttp(allow_private=True, timeout_s=1.5)
    started = time.monotonic()
    with pytest.raises(DownloadError, match="took longer than 1.5 s"):
        http.download(f"{server}{path}", tmp_path / "f", max_bytes=10_000_000)
    assert time.monotonic() - started < 2.5
    http.close()


def test_a_download_stops_when_its_check_raises(server, tmp_path):
    class Cancelled(Exception):
        pass

    calls = []

    def check():
        calls.append(time.monotonic())
        if len(calls) > 3:
            raise Cancelled

    http = SafeHttp(allow_private=True, timeout_s=60)
    started = time.monotonic()
    with pytest.raises(Cancelled):
        http.download(f"{server}/slow-headers", tmp_path / "f", max_bytes=10_000_000, check=check)
    assert time.monotonic() - started < 3
    http.close()
