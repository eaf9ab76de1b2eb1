"""Webhook delivery, in a background thread of every worker: never on the path of a job.

A finished request with a ``fal_webhook`` lands in the ``webhooks:due`` set (atomically with its completion,
see lipsync.queue.jobs). Any worker's dispatcher claims due deliveries with a lease, POSTs the hosted payload
shape, and on failure puts them back with exponential backoff, up to ``webhook_max_attempts``. A lease that
runs out (the worker died mid-delivery) returns the delivery to the due set.

Isolation: each attempt has one deadline (``webhook_timeout_s`` for connect, send and the whole reply), and
destinations (host:port) go in lanes (``_take``): one proven fast may use all of a worker's delivery threads
but one; a new one gets one delivery at a time until it answers fast, and new ones together never take the
last thread; those whose last attempt took more than half the deadline ("slow", for ``SLOW_FOR_S``) share
one thread between them. A receiver that trickles its reply delays its own webhooks, not everyone's.
A delivery that cannot start for those reasons goes back to the due set for ``DEFER_S``, its attempt count
untouched. The dispatcher claims new deliveries as soon as a thread frees, not only every ``POLL_INTERVAL_S``:
one busy destination gets its webhooks at the rate its receiver answers. A 3xx reply is
permanent (redirects are not followed: the signed body is for the URL the user gave).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from lipsync.queue.jobs import JobStore
from lipsync.queue.throttle import Throttled
from lipsync.queue.records import LogLevel, RequestRecord
from lipsync.contract.settings import Settings
from lipsync.contract.webhook_signing import WebhookSigner
from lipsync.storage import Storage, public_result
from lipsync.worker.safe_http import DownloadError, SafeHttp

log = logging.getLogger("lipsync.webhooks")

POLL_INTERVAL_S = 0.5
MAX_BACKOFF_S = 3600.0
SLOW_FOR_S = 600.0  # how long a destination that was slow shares the one slow-lane thread
DEFER_S = 1.0


def destination(url: str) -> str:
    """host:port of a webhook URL: the unit of isolation."""
    try:
        parts = urlsplit(url)
        return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    except ValueError:
        return url


def webhook_payload(record: RequestRecord, storage: Storage, url_ttl_s: int) -> dict[str, Any]:
    """fal's webhook body: ``{request_id, gateway_request_id, status: OK|ERROR, payload, error}``."""
    base = {"request_id": record.request_id, "gateway_request_id": record.request_id}
    err = record.error_obj
    if err is None:
        ttl_s = min(record.files_ttl_s or url_ttl_s, url_ttl_s)  # X-Fal-Object-Lifecycle-Preference
        payload = public_result(record.result or {}, storage, base_url=record.base_url, ttl_s=ttl_s)
        return base | {"status": "OK", "payload": payload, "error": None}
    return base | {"status": "ERROR", "payload": err.to_body(), "error": f"Invalid status code: {err.status_code}"}


class WebhookDispatcher:
    def __init__(self, settings: Settings, store: JobStore, storage: Storage, http: SafeHttp, *, workers: int = 4):
        self.settings, self.store, self.storage, self.http = settings, store, storage, http
        self.signer = WebhookSigner.from_settings(settings.webhook_signing_key, settings.storage_dir)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="webhook")
        self.workers = workers
        self._busy = 0  # deliveries running now; only the dispatcher thread adds, pool threads subtract
        self._busy_destinations: Counter[str] = Counter()  # deliveries in flight per destination
        self._wake = threading.Event()  # a thread freed: claim again now
        self._slow_until: dict[str, float] = {}  # destination -> monotonic time it stops counting as slow
        self._slow_busy = False  # the slow lane's one thread is in use
        self._fast_until: dict[str, float] = {}  # destination -> until when it counts as proven fast
        self._unproven = 0  # deliveries in flight to destinations not yet proven fast
        self._lock = threading.Lock()
        self._warn = Throttled(log)  # a failing tick (Redis down) logs one line a minute, not one every poll
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="webhook-dispatcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def wake(self) -> None:
        """Claim due deliveries now (a request this worker ran just completed)."""
        self._wake.set()

    def stop(self) -> None:
        self.stop_event.set()
        self._wake.set()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        lease = self.settings.webhook_timeout_s * 2 + 10
        while not self.stop_event.is_set():
            self._wake.wait(POLL_INTERVAL_S)
            self._wake.clear()
            if self.stop_event.is_set():
                return
            try:
                with self._lock:
                    free = self.workers - self._busy  # claim only what can start now; the rest is for others
                for rid in self.store.claim_webhooks(limit=free, lease_s=lease) if free > 0 else []:
                    record = self.store.get(rid)
                    dest = destination(record.webhook_url) if record is not None and record.webhook_url else ""
                    lane = self._take(dest)
                    if lane is None:
                        self.store.webhook_defer(rid, time.time() + DEFER_S)
                        continue
                    self.pool.submit(self._deliver_safely, rid, dest, lane)
            except Exception as exc:  # Redis down for a moment: try again next tick, say so once a minute
                self._warn.warning("tick", "webhook dispatcher: %s: %s (retrying every %.1f s)",
                                   type(exc).__name__, str(exc)[:200], POLL_INTERVAL_S)

    def _take(self, dest: str) -> str | None:
        """Reserve a thread for a delivery to ``dest`` and name its lane, or None when it must wait:
        - "slow": a destination slow within ``SLOW_FOR_S``; all of them share one thread;
        - "new": one not yet seen answering fast: one delivery at a time each, and with the slow lane never
          more than all threads but one, so a destination proven fast always finds a thread;
        - "fast": proven fast: up to all threads but one."""
        with self._lock:
            now = time.monotonic()
            slow = self._slow_until.get(dest, 0.0) > now
            fast = not slow and self._fast_until.get(dest, 0.0) > now
            busy = self._busy_destinations[dest] if dest else 0
            spare = max(1, self.workers - 1)
            if slow:
                if self._slow_busy:
                    return None
                lane = "slow"
            elif fast or not dest:
                if busy >= spare:
                    return None
                lane = "fast"
            else:
                if busy or self._unproven >= spare - (1 if self._slow_busy else 0):
                    return None
                lane = "new"
                self._unproven += 1
            self._busy += 1
            if dest:
                self._busy_destinations[dest] += 1
            self._slow_busy = self._slow_busy or slow
            return lane

    def _deliver_safely(self, rid: str, dest: str = "", lane: str = "normal") -> None:
        started = time.monotonic()
        try:
            self.deliver(rid)
        except Exception:
            log.exception("webhook delivery for %s failed unexpectedly", rid)
        finally:
            took = time.monotonic() - started
            with self._lock:
                self._busy -= 1
                if dest:
                    self._busy_destinations[dest] -= 1
                    if self._busy_destinations[dest] <= 0:
                        del self._busy_destinations[dest]
                if lane == "slow":
                    self._slow_busy = False
                elif lane == "new":
                    self._unproven -= 1
                if dest and took <= self.settings.webhook_timeout_s / 2:
                    self._fast_until[dest] = time.monotonic() + SLOW_FOR_S
                if dest and took > self.settings.webhook_timeout_s / 2:
                    self._slow_until[dest] = time.monotonic() + SLOW_FOR_S
                    self._fast_until.pop(dest, None)
                self._slow_until = {d: t for d, t in self._slow_until.items() if t > time.monotonic()}
                self._fast_until = {d: t for d, t in self._fast_until.items() if t > time.monotonic()}
            self._wake.set()

    def deliver(self, rid: str) -> None:
        record = self.store.get(rid)
        if record is None or not record.webhook_url:
            self.store.webhook_done(rid)
            return
        body = json.dumps(webhook_payload(record, self.storage, self.settings.url_ttl_s)).encode()
        headers = self.signer.headers(rid, record.owner, body)
        permanent = False
        try:
            status = self.http.post_json(record.webhook_url, body, headers, self.settings.webhook_timeout_s)
            problem = None if 200 <= status < 300 else f"HTTP {status}"
            if 300 <= status < 400:  # redirects are not followed: retrying gets the same answer
                problem, permanent = f"HTTP {status} (a redirect; webhook URLs must answer directly)", True
        except DownloadError as exc:
            problem, permanent = str(exc), exc.permanent
        attempt = record.webhook_attempts + 1
        if problem is None:
            self.store.webhook_done(rid)
            self.store.log(rid, f"Webhook delivered (attempt {attempt})")
            return
        if permanent:  # a refused address stays refused: no point in retrying for hours
            self.store.webhook_done(rid)
            self.store.log(rid, f"Webhook attempt {attempt} failed: {problem}; not retried", LogLevel.ERROR)
            return
        if attempt >= self.settings.webhook_max_attempts:
            self.store.webhook_done(rid)
            self.store.log(rid, f"Webhook failed after {attempt} attempts: {problem}; giving up", LogLevel.ERROR)
            return
        delay = min(self.settings.webhook_backoff_s * 3 ** (attempt - 1), MAX_BACKOFF_S)
        self.store.webhook_retry(rid, time.time() + delay)
        self.store.log(rid, f"Webhook attempt {attempt} failed: {problem}; retrying in {delay:.1f} s", LogLevel.WARN)
