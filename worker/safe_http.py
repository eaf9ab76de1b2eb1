"""Outbound HTTP for user-given URLs (file inputs, webhooks) that cannot be pointed at our own network.

Every TCP connection goes through ``GuardedBackend``: it resolves the host itself, refuses the connection
unless every address is public (not loopback, private, link-local — 169.254.169.254 —, multicast or
reserved), then connects to the address it checked. Checking at connect time, on the address actually
used, covers redirects and DNS rebinding alike. ``allow_private`` (tests, LANs) turns the check off.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpcore
import httpx

MAX_REDIRECTS = 5
USER_AGENT = "lipsync-server/0.1"


class RefusedAddress(httpcore.ConnectError):
    """The URL resolves to an address user-given URLs may not reach."""


class DownloadError(Exception):
    """A download failed; the message is fit to show the user."""


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class GuardedBackend(httpcore.SyncBackend):
    def __init__(self, allow_private: bool):
        self.allow_private = allow_private

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve host {host!r}: {exc}") from exc
        addresses = [info[4][0] for info in infos]
        if not self.allow_private and not all(is_public(a) for a in addresses):
            raise RefusedAddress(f"host {host!r} resolves to a private, loopback or reserved address")
        return super().connect_tcp(addresses[0], port, timeout, local_address, socket_options)


@dataclass
class Downloaded:
    path: Path
    size: int
    content_type: str


class SafeHttp:
    def __init__(self, *, allow_private: bool, timeout_s: float):
        self.timeout_s = timeout_s
        self.pool = httpcore.ConnectionPool(network_backend=GuardedBackend(allow_private), max_connections=16)

    def close(self) -> None:
        self.pool.close()

    def _timeouts(self, total: float) -> dict[str, float]:
        step = min(total, 15.0)
        return {"connect": step, "read": step, "write": step, "pool": step}

    def download(self, url: str, dest: Path, *, max_bytes: int) -> Downloaded:
        """GET ``url`` into ``dest``, following up to 5 redirects, within ``timeout_s`` overall and ``max_bytes``."""
        deadline = time.monotonic() + self.timeout_s
        for _ in range(MAX_REDIRECTS + 1):
            url = _normalise(url)
            with _as_download_errors(), self.pool.stream(
                "GET",
                url,
                headers={"User-Agent": USER_AGENT, "Accept": "*/*"},
                extensions={"timeout": self._timeouts(self.timeout_s)},
            ) as response:
                headers = {k.decode().lower(): v.decode("latin-1") for k, v in response.headers}
                if response.status in {301, 302, 303, 307, 308} and "location" in headers:
                    url = urljoin(url, headers["location"])
                    continue
                if response.status >= 400:
                    raise DownloadError(f"the server answered HTTP {response.status}")
                declared = headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise DownloadError(f"file is larger than the {max_bytes}-byte limit")
                size = 0
                with open(dest, "wb") as fh:
                    for chunk in response.iter_stream():
                        size += len(chunk)
                        if size > max_bytes:
                            raise DownloadError(f"file is larger than the {max_bytes}-byte limit")
                        if time.monotonic() > deadline:
                            raise DownloadError(f"download took longer than {self.timeout_s:.0f} s")
                        fh.write(chunk)
                content_type = headers.get("content-type", "application/octet-stream").split(";")[0].strip()
                return Downloaded(dest, size, content_type)
        raise DownloadError(f"more than {MAX_REDIRECTS} redirects")

    def post_json(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
        """POST a JSON body; returns the HTTP status. Raises DownloadError on refusal or network failure."""
        url = _normalise(url)
        with _as_download_errors():
            response = self.pool.request(
                "POST",
                url,
                headers={"User-Agent": USER_AGENT, "Content-Type": "application/json", **headers},
                content=body,
                extensions={"timeout": self._timeouts(timeout_s)},
            )
        return response.status


@contextlib.contextmanager
def _as_download_errors() -> Iterator[None]:
    """httpcore's exceptions as DownloadError, with a message fit for the user."""
    try:
        yield
    except RefusedAddress as exc:
        raise DownloadError(f"refused: {exc}") from None
    except httpcore.TimeoutException:
        raise DownloadError("the server did not answer in time") from None
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
        raise DownloadError(f"could not reach the server: {exc or type(exc).__name__}") from None


def _normalise(url: str) -> str:
    """The URL as it goes on the wire (IDNA host, escaped path); only http(s)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise DownloadError(f"not a valid URL: {exc}") from None
    if parsed.scheme not in {"http", "https"} or not parsed.host:
        raise DownloadError("only http and https URLs with a host can be fetched")
    return str(parsed)
