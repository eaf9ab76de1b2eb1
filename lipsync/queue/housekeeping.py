"""Housekeeping every API and worker process runs: reaping lost requests, deleting expired files.

Reaping (every ``reaper_interval_s``): see ``JobStore.reap``. Retention (every ``retention_interval_s``):
stored files are deleted once nobody can ask for them any more.

- A request's own files (its result, the API's copies of its data: URIs) go when its record expires
  (``result_ttl_s`` after completion); completion recorded which keys those are (lipsync.queue.jobs).
- Uploads are not tied to one request: they go ``upload_ttl_s`` after they were written.

Any process may do both at once as others: claims and transitions are atomic in Redis.
"""

from __future__ import annotations

import logging
import time

import redis

from lipsync.queue.dispatch import Dispatcher
from lipsync.queue.jobs import JobStore
from lipsync.queue.records import RequestStatus
from lipsync.queue.throttle import Throttled
from lipsync.contract.settings import Settings
from lipsync.storage.base import Storage

log = logging.getLogger("lipsync.retention")

UPLOADS_PREFIX = "uploads/"


def sweep(store: JobStore, storage: Storage, *, upload_ttl_s: float) -> int:
    """Delete what has outlived its retention; returns the number of objects deleted."""
    deleted = 0
    for rid, keys in store.expired_files().items():
        for key in keys:
            storage.delete(key)
            deleted += 1
        log.info("retention: deleted %d files of request %s", len(keys), rid)
    deleted += storage.delete_older_than(UPLOADS_PREFIX, upload_ttl_s)
    return deleted


class Housekeeper:
    """With a ``dispatcher`` (lipsync.queue.dispatch), a request whose worker died goes back on RQ and a request
    that waited too long leaves its RQ queue; without one, the former fails ``runner_disconnected`` at once."""

    def __init__(self, store: JobStore, storage: Storage, settings: Settings, *, dispatcher: Dispatcher | None = None):
        self.store, self.storage, self.settings = store, storage, settings
        self.dispatcher = dispatcher
        self._next_sweep = 0.0
        self._orphans: dict[str, float] = {}  # queued request id -> when it was first seen off every RQ queue
        self._warn = Throttled(log)

    def tick(self) -> None:
        """One round; call it every ``reaper_interval_s``. Never raises for Redis or storage trouble."""
        try:
            requeue = self.dispatcher.requeue if self.dispatcher else None
            reaped = self.store.reap(
                max_retries=self.settings.max_runner_retries, requeue=requeue,
                max_worker_deaths=self.settings.max_worker_deaths, heartbeat_ttl_s=self.settings.heartbeat_ttl_s,
            )
            for rid, outcome in reaped:
                log.warning("reaped request %s: %s", rid, outcome)
                if outcome == "request_timeout" and self.dispatcher:
                    self.dispatcher.drop(rid)  # else it would count in every later queue position
            if self.dispatcher:
                self._redispatch_lost()
            if time.monotonic() >= self._next_sweep:
                self._next_sweep = time.monotonic() + self.settings.retention_interval_s
                sweep(self.store, self.storage, upload_ttl_s=self.settings.upload_ttl_s)
        except (redis.RedisError, OSError, NotImplementedError) as exc:
            self._warn.warning("skipped", "housekeeping skipped a round: %s", str(exc)[:200])

    def _redispatch_lost(self) -> None:
        """Queue again an IN_QUEUE request that is on no RQ queue for ``heartbeat_ttl_s``.

        That happens when a worker took the job off the queue and then died or lost Redis before it could
        claim the request (a SIGKILL or a Redis crash in that instant): nothing would ever run it.
        """
        now, grace = time.monotonic(), self.settings.heartbeat_ttl_s
        waiting = self.store.queued_ids()
        on_rq = self.dispatcher.queued_ids()
        lost = waiting - on_rq
        self._orphans = {rid: self._orphans.get(rid, now) for rid in lost}
        for rid, since in self._orphans.items():
            if now - since < grace or not self.dispatcher.claim_redispatch(rid, grace):
                continue
            record = self.store.get(rid)
            if record is None or record.status is not RequestStatus.IN_QUEUE:
                continue
            self.dispatcher.requeue(record, record.wait_s or self.settings.queued_ttl_s)
            self.store.log(rid, "The request's job was lost (a worker or Redis crashed as it was taken); queued again")
            log.warning("request %s was on no queue; queued again", rid)
