"""Webhook delivery, in a background thread of every worker: never on the path of a job.

A finished request with a ``fal_webhook`` lands in the ``webhooks:due`` set (atomically with its completion,
see lipsync.queue.jobs). Any worker's dispatcher claims due deliveries with a lease, POSTs the hosted payload
shape, and on failure puts them back with exponential backoff, up to ``webhook_max_attempts``. A lease that
runs out (the worker died mid-delivery) returns the delivery to the due set.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lipsync.queue.jobs import JobStore
from lipsync.queue.records import LogLevel, RequestRecord
from lipsync.contract.settings import Settings
from lipsync.contract.webhook_signing import WebhookSigner
from lipsync.storage import Storage, public_result
from lipsync.worker.safe_http import DownloadError, SafeHttp

log = logging.getLogger("lipsync.webhooks")

POLL_INTERVAL_S = 0.5
MAX_BACKOFF_S = 3600.0


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
        self._lock = threading.Lock()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="webhook-dispatcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        lease = self.settings.webhook_timeout_s * 2 + 10
        while not self.stop_event.wait(POLL_INTERVAL_S):
            try:
                with self._lock:
                    free = self.workers - self._busy  # claim only what can start now; the rest is for others
                for rid in self.store.claim_webhooks(limit=free, lease_s=lease) if free > 0 else []:
                    with self._lock:
                        self._busy += 1
                    self.pool.submit(self._deliver_safely, rid)
            except Exception:  # Redis down for a moment: try again next tick
                log.exception("webhook dispatcher tick failed")

    def _deliver_safely(self, rid: str) -> None:
        try:
            self.deliver(rid)
        except Exception:
            log.exception("webhook delivery for %s failed unexpectedly", rid)
        finally:
            with self._lock:
                self._busy -= 1

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
