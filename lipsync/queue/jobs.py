"""The job store: a request's record and event stream in Redis, changed only through the scripts in ``lua``.

The API and the workers meet here and nowhere else. A request's truth is one Redis hash (``RequestRecord``)
plus one Redis stream of its log lines and status changes. RQ only carries the work to a worker: the job id
is the request id and the job's one argument is that id.

Every state change is one Lua script, so the races that matter resolve in Redis: a cancel and a worker's
start, a worker's finish and the reaper's verdict on a worker it thinks dead. Whoever changes the status
first wins; the loser's script returns 0 and changes nothing.

Status flow (fal's three statuses; failures and cancels end COMPLETED with an error)::

    IN_QUEUE ──start──► IN_PROGRESS ──complete──► COMPLETED
        └─────────────── complete (cancel, queue timeout) ──┘
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import redis

from lipsync.contract.errors import (
    LipsyncError, PoisonRequest, RequestCancelled, RequestTimeout, RunnerDisconnected,
)
from lipsync.queue import lua
from lipsync.queue.records import (
    DURATION_BUCKETS, LOG_STREAM_MAXLEN, PREFIX, Event, Keys, LogLevel, RequestRecord, RequestStatus, as_str, parse_events,
    stored_keys, utcnow_iso,
)


def redis_unavailable(exc: BaseException) -> bool:
    """An outage to wait out rather than a bug: Redis unreachable, or refusing writes for now (MISCONF: its
    disk is full or a save failed; READONLY: a replica mid-failover). Both clear by themselves."""
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError)):
        return True
    return isinstance(exc, redis.ResponseError) and ("MISCONF" in str(exc) or "READONLY" in str(exc))


class JobStore:
    """Request records in Redis. Synchronous: workers call it directly, the API from its thread pool."""

    def __init__(self, connection: redis.Redis, *, result_ttl_s: int = 7 * 24 * 3600):
        self.r = connection
        self.result_ttl_s = result_ttl_s
        self._start = connection.register_script(lua.START)
        self._complete = connection.register_script(lua.COMPLETE)
        self._claim = connection.register_script(lua.CLAIM_WEBHOOKS)
        self._restore = connection.register_script(lua.RESTORE_EXPIRED_LEASES)
        self._requeue = connection.register_script(lua.REQUEUE)
        self._beat = connection.register_script(lua.BEAT)

    # --- create and read ------------------------------------------------------------------------------

    def create(self, record: RequestRecord, *, queued_deadline: float, pipe: redis.client.Pipeline) -> None:
        """Queue the writes that create ``record``; the caller executes ``pipe`` with the RQ enqueue."""
        pipe.hset(Keys.request(record.request_id), mapping=record.to_hash())
        pipe.zadd(Keys.queued, {record.request_id: queued_deadline})
        pipe.xadd(Keys.events(record.request_id), {"kind": "status", "status": RequestStatus.IN_QUEUE.value})

    def get(self, rid: str) -> RequestRecord | None:
        raw = self.r.hgetall(Keys.request(rid))
        return RequestRecord.from_hash(raw) if raw else None

    def events(self, rid: str, after: str = "-", count: int | None = None) -> list[Event]:
        start = "-" if after == "-" else f"({after}"
        return parse_events(self.r.xrange(Keys.events(rid), min=start, max="+", count=count))

    def logs(self, rid: str) -> list[dict[str, str]]:
        return [e.log_entry() for e in self.events(rid) if e.kind == "log"]

    # --- worker side -----------------------------------------------------------------------------------

    def start(self, rid: str, worker: str, heartbeat_ttl_s: float, token: str = "") -> bool:
        """Claim a queued request for one attempt; ``token`` then names that attempt (see ``owns``)."""
        keys = [Keys.request(rid), Keys.running, Keys.queued, Keys.heartbeat(rid), Keys.events(rid)]
        args = [time.time(), worker, rid, int(heartbeat_ttl_s * 1000), LOG_STREAM_MAXLEN, token]
        return bool(self._start(keys=keys, args=args))

    def heartbeat(self, rid: str, worker: str, ttl_s: float, token: str = "") -> bool:
        """Refresh a live heartbeat of the attempt ``token``; False once that attempt no longer owns it.

        XX: once completion deleted the heartbeat (or the reaper found it lapsed), a late beat must not
        revive it.
        """
        keys = [Keys.request(rid), Keys.heartbeat(rid)]
        return bool(self._beat(keys=keys, args=[token, worker, int(ttl_s * 1000)]))

    def owns(self, rid: str, token: str) -> bool:
        """Whether attempt ``token`` still runs this request (not queued again after a lapsed heartbeat)."""
        raw = self.r.hmget(Keys.request(rid), ["status", "run_token"])
        return as_str(raw[0] or b"") == RequestStatus.IN_PROGRESS.value and as_str(raw[1] or b"") == token

    def log(self, rid: str, message: str, level: LogLevel = LogLevel.INFO) -> None:
        entry = {"kind": "log", "level": level.value, "message": message, "timestamp": utcnow_iso()}
        self.r.xadd(Keys.events(rid), entry, maxlen=LOG_STREAM_MAXLEN, approximate=True)

    def is_cancel_requested(self, rid: str) -> bool:
        return bool(self.r.exists(Keys.cancel(rid)))

    def complete(
        self,
        rid: str,
        *,
        result: dict[str, Any] | None = None,
        error: LipsyncError | None = None,
        metrics: dict[str, Any] | None = None,
        expected: RequestStatus | None = None,
        token: str = "",
    ) -> bool:
        """Finish a request with a result or an error. False if it had already finished, was not ``expected``,
        or (with ``token``) is no longer run by that attempt."""
        now = time.time()
        record = self.r.hmget(Keys.request(rid), ["started_at", "created_at", "owner", "input", "files_ttl_s"])
        started = float(record[0] or record[1] or now)
        owner = as_str(record[2] or b"")
        stored = stored_keys(json.loads(record[3] or "{}"), result or {})
        outcome = "error" if error is not None else "ok"
        duration = now - started
        bucket = next((str(b) for b in DURATION_BUCKETS if duration <= b), "+Inf")
        stats = [f"count:{outcome}", f"bucket:{outcome}:{bucket}"]
        keys = [
            Keys.request(rid),
            Keys.running,
            Keys.queued,
            Keys.heartbeat(rid),
            Keys.events(rid),
            Keys.webhooks_due,
            Keys.stats,
            Keys.retention,
            f"{PREFIX}:inflight:{owner}",
        ]
        args = [
            now,
            json.dumps(result),
            json.dumps(error.to_record() if error else None),
            json.dumps(metrics or {}),
            self.result_ttl_s,
            expected.value if expected else "",
            rid,
            LOG_STREAM_MAXLEN,
            json.dumps(stored),
            token,
            min(int(record[4] or 0) or self.result_ttl_s, self.result_ttl_s),
            *stats,
        ]
        done = bool(self._complete(keys=keys, args=args))
        if done:
            # Summed outside the script: HINCRBYFLOAT of a float string is exact enough for a metric.
            self.r.hincrbyfloat(Keys.stats, f"sum:{outcome}", duration)
        return done

    # --- cancel (API side) -----------------------------------------------------------------------------

    def request_cancel(self, rid: str) -> RequestStatus:
        """Flag a cancel; returns the status seen. A queued request is finished here, a running one by its worker."""
        self.r.set(Keys.cancel(rid), 1, ex=24 * 3600)
        record = self.get(rid)
        assert record is not None
        if record.status is RequestStatus.IN_QUEUE:
            self.complete(rid, error=RequestCancelled(), expected=RequestStatus.IN_QUEUE)
        return record.status

    # --- reaping: requests whose worker died, or that waited too long -------------------------------------

    def reap(
        self,
        now: float | None = None,
        *,
        max_retries: int = 0,
        requeue: Callable[[RequestRecord, float], None] | None = None,
        max_worker_deaths: int = 0,
        heartbeat_ttl_s: float = 0.0,
    ) -> list[tuple[str, str]]:
        """Deal with IN_PROGRESS requests whose heartbeat lapsed and IN_QUEUE ones past their deadline.

        A lapsed request is queued again (``requeue(record, wait_s)`` puts it back on RQ) while it has
        retries left and its caller did not send X-Fal-No-Retry; else it fails ``runner_disconnected``. A
        request whose workers died running it ``max_worker_deaths`` times (0: no limit) ends
        ``poison_request`` instead of going to yet another worker.
        Returns (request id, "requeued" | "runner_disconnected" | "request_timeout") for each one handled.
        """
        now = time.time() if now is None else now
        reaped = []
        for raw in self.r.zrange(Keys.running, 0, -1):
            rid = as_str(raw)
            if self.r.exists(Keys.heartbeat(rid)):
                continue
            record = self.get(rid)
            if record is not None and requeue is not None and not record.no_retry and record.runner_attempts < max_retries:
                lost = self._lost_workers(rid) + [record.worker]
                deaths = self._still_gone(lost, now, heartbeat_ttl_s)
                if max_worker_deaths and len(deaths) >= max_worker_deaths:
                    error = PoisonRequest(
                        f"The request's worker died while running it {len(deaths)} times (killed or out of memory); "
                        "it is not run again."
                    )
                    if self.complete(rid, error=error, expected=RequestStatus.IN_PROGRESS):
                        reaped.append((rid, error.error_type))
                    continue
                if self._queue_again(record, now, max_retries, requeue):
                    self.r.hset(Keys.request(rid), "lost_workers", json.dumps(lost))
                    reaped.append((rid, "requeued"))
                continue
            error = RunnerDisconnected("The worker running this request stopped responding (killed or lost).")
            if self.complete(rid, error=error, expected=RequestStatus.IN_PROGRESS):
                reaped.append((rid, error.error_type))
            else:
                self.r.zrem(Keys.running, rid)
        for raw in self.r.zrangebyscore(Keys.queued, "-inf", now):
            rid = as_str(raw)
            user = self.r.hget(Keys.request(rid), "user_timeout")
            error = RequestTimeout(
                "The request did not start within its allowed waiting time and was dropped.",
                timeout_type="user" if user else "server",
            )
            if self.complete(rid, error=error, expected=RequestStatus.IN_QUEUE):
                reaped.append((rid, error.error_type))
            else:
                self.r.zrem(Keys.queued, rid)
        return reaped

    def _lost_workers(self, rid: str) -> list[str]:
        return json.loads(as_str(self.r.hget(Keys.request(rid), "lost_workers") or b"[]"))

    def _still_gone(self, workers: list[str], now: float, heartbeat_ttl_s: float) -> list[str]:
        """The workers that died. A live worker's liveness runs more than ttl/2 ahead (it beats every interval,
        well under that); a dead one's lapses within an interval of its request's heartbeat. A worker that only
        lost Redis for a while beats again within seconds, and deaths are judged again at every reap."""
        scores = self.r.zmscore(Keys.workers_alive, workers) if workers else []
        return [w for w, until in zip(workers, scores) if w and (until is None or until <= now + heartbeat_ttl_s / 2)]

    def _queue_again(
        self, record: RequestRecord, now: float, max_retries: int, requeue: Callable[[RequestRecord, float], None]
    ) -> bool:
        rid = record.request_id
        wait_s = record.wait_s or 24 * 3600.0
        keys = [Keys.request(rid), Keys.running, Keys.queued, Keys.heartbeat(rid), Keys.events(rid)]
        line = f"Runner disconnected (worker {record.worker or '?'} stopped responding); retrying, attempt "
        args = [now + wait_s, rid, LOG_STREAM_MAXLEN, line, utcnow_iso(), f" of {max_retries}"]
        if not self._requeue(keys=keys, args=args):
            return False
        requeue(record, wait_s)
        return True

    # --- retention -------------------------------------------------------------------------------------------

    def expired_files(self, now: float | None = None, limit: int = 100) -> dict[str, list[str]]:
        """Claim requests whose retention ran out: request id -> storage keys to delete (claimed once)."""
        now = time.time() if now is None else now
        due = {}
        for raw in self.r.zrangebyscore(Keys.retention, "-inf", now, start=0, num=limit):
            rid = as_str(raw)
            if self.r.zrem(Keys.retention, rid):  # whoever removes it deletes its files
                keys = self.r.hget(f"{Keys.retention}:keys", rid)
                self.r.hdel(f"{Keys.retention}:keys", rid)
                due[rid] = json.loads(keys or "[]")
        return due

    def expire_files_at(self, name: str, keys: list[str], at: float) -> None:
        """Delete ``keys`` at ``at`` (an upload with a lifecycle header); ``name`` is unique per upload."""
        pipe = self.r.pipeline()
        pipe.zadd(Keys.retention, {name: at})
        pipe.hset(f"{Keys.retention}:keys", name, json.dumps(keys))
        pipe.execute()

    # --- webhooks ----------------------------------------------------------------------------------------

    def claim_webhooks(self, limit: int, lease_s: float) -> list[str]:
        now = time.time()
        self._restore(keys=[Keys.webhooks_due, Keys.webhooks_inflight], args=[now])
        ids = self._claim(keys=[Keys.webhooks_due, Keys.webhooks_inflight], args=[now, limit, now + lease_s])
        return [as_str(i) for i in ids]

    def webhook_done(self, rid: str) -> None:
        self.r.zrem(Keys.webhooks_inflight, rid)

    def webhook_defer(self, rid: str, at: float) -> None:
        """Put a claimed delivery back without counting an attempt (its destination was busy)."""
        pipe = self.r.pipeline()
        pipe.zrem(Keys.webhooks_inflight, rid)
        pipe.zadd(Keys.webhooks_due, {rid: at})
        pipe.execute()

    def webhook_retry(self, rid: str, at: float) -> int:
        """Schedule another attempt; returns the number of attempts made so far."""
        attempts = self.r.hincrby(Keys.request(rid), "webhook_attempts", 1)
        pipe = self.r.pipeline()
        pipe.zrem(Keys.webhooks_inflight, rid)
        pipe.zadd(Keys.webhooks_due, {rid: at})
        pipe.execute()
        return int(attempts)

    # --- worker liveness (what /readyz counts) ---------------------------------------------------------

    def worker_alive(self, name: str, ttl_s: float) -> None:
        self.r.zadd(Keys.workers_alive, {name: time.time() + ttl_s})

    def worker_gone(self, name: str) -> None:
        self.r.zrem(Keys.workers_alive, name)

    def live_workers(self) -> list[str]:
        """Workers whose liveness beat is current; a SIGKILLed one drops out within its TTL."""
        now = time.time()
        self.r.zremrangebyscore(Keys.workers_alive, "-inf", now)
        return [as_str(n) for n in self.r.zrange(Keys.workers_alive, 0, -1)]

    # --- figures for /metrics ---------------------------------------------------------------------------

    def job_stats(self) -> dict[str, float]:
        return {as_str(k): float(v) for k, v in self.r.hgetall(Keys.stats).items()}

    def queued_ids(self) -> set[str]:
        """Requests waiting to start (IN_QUEUE)."""
        return {as_str(raw) for raw in self.r.zrange(Keys.queued, 0, -1)}

    def counts(self) -> dict[str, int]:
        return {"running": self.r.zcard(Keys.running), "queued": self.r.zcard(Keys.queued)}
