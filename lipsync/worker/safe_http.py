"""Outbound HTTP for user-given URLs (file inputs, webhooks) that cannot be pointed at our own network.

Every TCP connection goes through ``GuardedBackend``: it resolves the host itself, refuses the connection
unless every address is public (not loopback, private, link-local — 169.254.169.254 —, multicast or
reserved), then connects to the address it checked. Checking at connect time, on the address actually
used, covers redirects and DNS rebinding alike. ``allow_private`` (tests, LANs) turns the check off.

Each download, and each webhook POST, runs under one deadline (a ``_Budget`` in a context variable, so it
follows the calling thread): DNS, connect, TLS, every socket read and write and the redirects all draw on
it, and a blocked read wakes every ``CHECK_INTERVAL_S`` to run the caller's cancel check. A server that
trickles its headers a byte at a time cannot hold the caller past the deadline.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpcore
import httpx

MAX_REDIRECTS = 5
USER_AGENT = "lipsync-server/0.1"
CHECK_INTERVAL_S = 0.5  # how often a blocked read wakes to look at the deadline and the cancel check


class RefusedAddress(httpcore.ConnectError):
    """The URL resolves to an address user-given URLs may not reach."""


class DeadlinePassed(httpcore.TimeoutException):
    """The whole operation's deadline ran out (not one read's timeout)."""


@dataclass(frozen=True)
class _Budget:
    deadline: float  # time.monotonic()
    total_s: float
    check: Callable[[], None] | None  # raises to stop (a cancelled request)

    def cap(self, timeout: float | None) -> float:
        """``timeout`` bounded by what is left; raises DeadlinePassed once nothing is."""
        if self.check is not None:
            self.check()
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlinePassed(f"took longer than {self.total_s:g} s")
        return left if timeout is None else min(timeout, left)


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("safe_http_budget", default=None)


def _cap(timeout: float | None) -> float | None:
    budget = _budget.get()
    return timeout if budget is None else budget.cap(timeout)


class DeadlineStream(httpcore.NetworkStream):
    """A connection whose every operation is bounded by the calling thread's budget (pooled connections are
    reused across downloads, so the budget is looked up at each call, not fixed at connect)."""

    def __init__(self, inner: httpcore.NetworkStream):
        self.inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if _budget.get() is None:
            return self.inner.read(max_bytes, timeout)
        # Sliced waits: a silent server still lets the deadline and the cancel check run.
        until = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if until is None else until - time.monotonic()
            if left is not None and left <= 0:
                raise httpcore.ReadTimeout("timed out")
            wait = _cap(CHECK_INTERVAL_S if left is None else min(left, CHECK_INTERVAL_S))
            try:
                return self.inner.read(max_bytes, wait)
            except httpcore.ReadTimeout:
                continue

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, _cap(timeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context, server_hostname: str | None = None, timeout: float | None = None):
        return DeadlineStream(self.inner.start_tls(ssl_context, server_hostname, _cap(timeout)))

    def get_extra_info(self, info: str):
        return self.inner.get_extra_info(info)


def _resolve(host: str, port: int) -> list:
    """getaddrinfo, bounded by the budget: a slow DNS server cannot hold the caller either."""
    if _budget.get() is None:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    done: dict = {}

    def lookup() -> None:
        try:
            done["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            done["error"] = exc

    thread = threading.Thread(target=lookup, name="resolve", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(_cap(CHECK_INTERVAL_S))
    if "error" in done:
        raise done["error"]
    return done["infos"]


class DownloadError(Exception):
    """A download failed; the message is fit to show the user. ``permanent``: retrying cannot help (the
    address is refused, the URL is not valid), so webhook delivery gives up at once."""

    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


# IPv6 ranges that carry an IPv4 address in their low 32 bits and can reach it: IPv4-compatible (::a.b.c.d,
# deprecated), IPv4-translated (::ffff:0:a.b.c.d, RFC 2765) and NAT64 (64:ff9b::/96, 64:ff9b:1::/48).
_EMBEDS_IPV4_LOW32 = [ipaddress.ip_network(n) for n in ("::/96", "::ffff:0:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48")]


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address an IPv6 address may lead to: mapped, compatible, translated, NAT64, 6to4, Teredo."""
    found = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)  # (server, client)
    if any(ip in net for net in _EMBEDS_IPV4_LOW32):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


# IANA "IPv6 Global Unicast Address Assignments": only 2000::/3 is allocated as global unicast. Anything
# outside it (site-local fec0::/10, discard-only 100::/64, SRv6 SIDs 5f00::/16, and whatever is assigned
# there later) is not a host on the internet.
_IPV6_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
# The one IANA special-purpose entry the standard library still calls global: 6to4 relay anycast, deprecated
# by RFC 7526 (a relay, not a host; 2002::/16 itself is judged by the IPv4 address it embeds).
_IANA_DEPRECATED = [ipaddress.ip_network("192.88.99.0/24")]


def _is_global_unicast(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """The standard library's reading of IANA's special-purpose registries, every flag of it, plus the above."""
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_link_local or ip.is_loopback:
        return False
    if ip.is_unspecified or ip.is_private or any(ip in net for net in _IANA_DEPRECATED):
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        return not ip.is_site_local and ip in _IPV6_GLOBAL_UNICAST
    return True


def is_public(address: str) -> bool:
    """A globally routable unicast address, and so is every IPv4 address it embeds."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if ip in ipaddress.ip_network("::/96") and int(ip) > 1:
            return False  # IPv4-compatible addresses are deprecated (RFC 4291): never a real public host
        if embedded:  # mapped, NAT64, 6to4, Teredo: the IPv4 address they lead to decides
            return all(_is_global_unicast(c) for c in embedded) and (ip.ipv4_mapped is not None or ip.is_global)
    return all(_is_global_unicast(c) for c in candidates)


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
            infos = _resolve(host, port)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve host {host!r}: {exc}") from exc
        addresses = [info[4][0] for info in infos]
        if not self.allow_private and not all(is_public(a) for a in addresses):
            raise RefusedAddress(f"host {host!r} resolves to a private, loopback or reserved address")
        stream = super().connect_tcp(addresses[0], port, _cap(timeout), local_address, socket_options)
        return DeadlineStream(stream)


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

    @contextlib.contextmanager
    def _deadline(self, total_s: float, check: Callable[[], None] | None) -> Iterator[None]:
        token = _budget.set(_Budget(time.monotonic() + total_s, total_s, check))
        try:
            yield
        finally:
            _budget.reset(token)

    @staticmethod
    def _timeouts(total: float) -> dict[str, float]:
        step = min(total, 15.0)
        return {"connect": step, "read": step, "write": step, "pool": step}

    def download(
        self, url: str, dest: Path, *, max_bytes: int, check: Callable[[], None] | None = None
    ) -> Downloaded:
        """GET ``url`` into ``dest``, following up to 5 redirects, within ``timeout_s`` in all (DNS, connect,
        headers, redirects and body) and ``max_bytes``. ``check`` runs at least every CHECK_INTERVAL_S
        while it waits; what it raises (a cancel) ends the download."""
        with self._deadline(self.timeout_s, check), _as_download_errors():
            for _ in range(MAX_REDIRECTS + 1):
                url = _normalise(url)
                with self.pool.stream(
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
                            _cap(None)  # a fast trickle: the deadline holds between reads too
                            fh.write(chunk)
                    content_type = headers.get("content-type", "application/octet-stream").split(";")[0].strip()
                    return Downloaded(dest, size, content_type)
            raise DownloadError(f"more than {MAX_REDIRECTS} redirects")

    def post_json(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
        """POST a JSON body within ``timeout_s`` in all (connect, send, the whole reply); returns the HTTP
        status. Raises DownloadError on refusal, network failure or the deadline."""
        url = _normalise(url)
        with self._deadline(timeout_s, None), _as_download_errors():
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
        raise DownloadError(f"refused: {exc}", permanent=True) from None
    except DeadlinePassed as exc:
        raise DownloadError(f"the transfer {exc}") from None
    except httpcore.TimeoutException:
        raise DownloadError("the server did not answer in time") from None
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
        raise DownloadError(f"could not reach the server: {exc or type(exc).__name__}") from None


def _normalise(url: str) -> str:
    """The URL as it goes on the wire (IDNA host, escaped path); only http(s)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise DownloadError(f"not a valid URL: {exc}", permanent=True) from None
    if parsed.scheme not in {"http", "https"} or not parsed.host:
        raise DownloadError("only http and https URLs with a host can be fetched", permanent=True)
    return str(parsed)
