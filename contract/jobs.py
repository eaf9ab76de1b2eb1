"""The queue contract: request records, statuses, log entries, and their life in Redis.

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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any

import redis

from contract.errors import LipsyncError, RequestCancelled, RequestTimeout, RunnerDisconnected

PREFIX = "lipsync"
RUN_REQUEST = "worker.tasks.run_request"  # the RQ job function, named so the API never imports the worker
LOG_STREAM_MAXLEN = 2000
DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class RequestStatus(str, Enum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


class LogLevel(str, Enum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARN = "WARN"
    ERROR = "ERROR"
    STDOUT = "STDOUT"
    STDERR = "STDERR"


def utcnow_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


class Keys:
    """Every Redis key the contract uses, in one place."""

    running = f"{PREFIX}:running"  # ZSET request id -> start time
    queued = f"{PREFIX}:queued"  # ZSET request id -> deadline to start
    webhooks_due = f"{PREFIX}:webhooks:due"  # ZSET request id -> next attempt time
    webhooks_inflight = f"{PREFIX}:webhooks:inflight"  # ZSET request id -> lease end
    stats = f"{PREFIX}:stats:jobs"  # HASH counters for /metrics
    retention = f"{PREFIX}:retention"  # ZSET request id -> when its stored files are deleted
    workers_alive = f"{PREFIX}:workers:alive"  # ZSET worker name -> when its liveness lapses

    @staticmethod
    def request(rid: str) -> str:
        return f"{PREFIX}:req:{rid}"

    @staticmethod
    def events(rid: str) -> str:
        return f"{PREFIX}:events:{rid}"

    @staticmethod
    def heartbeat(rid: str) -> str:
        return f"{PREFIX}:hb:{rid}"

    @staticmethod
    def cancel(rid: str) -> str:
        return f"{PREFIX}:cancel:{rid}"


@dataclass
class ResultFile:
    """The output file as stored: the API turns ``key`` into a signed URL when it answers."""

    key: str
    content_type: str
    file_name: str
    file_size: int


@dataclass
class RequestRecord:
    request_id: str
    app_id: str
    owner: str
    status: RequestStatus
    input: dict[str, Any]
    created_at: float
    base_url: str = ""
    webhook_url: str = ""
    started_at: float | None = None
    completed_at: float | None = None
    worker: str = ""
    result: dict[str, Any] | None = None  # output JSON with ResultFile dicts in place of File objects
    error: dict[str, Any] | None = None  # LipsyncError.to_record()
    metrics: dict[str, Any] = field(default_factory=dict)
    webhook_attempts: int = 0
    priority: str = "normal"  # x-fal-queue-priority: normal | low
    no_retry: bool = False  # X-Fal-No-Retry: never queue again after a runner failure
    runner_attempts: int = 0  # times it was queued again because its worker died
    user_timeout: bool = False  # its start deadline came from the caller's X-Fal-Request-Timeout
    files_ttl_s: int = 0  # X-Fal-Object-Lifecycle-Preference, bounded; 0: the server's retention
    run_token: str = ""  # the current attempt's owner: only it may beat, log progress and complete
    wait_s: float = 0.0  # how long it may wait in the queue, each time it is queued

    _JSON_FIELDS = ("input", "result", "error", "metrics")

    def to_hash(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in self.__dict__.items():
            if name in self._JSON_FIELDS:
                out[name] = json.dumps(value)
            elif isinstance(value, RequestStatus):
                out[name] = value.value
            elif isinstance(value, bool):
                out[name] = "1" if value else ""
            elif value is not None:
                out[name] = str(value)
        return out

    @classmethod
    def from_hash(cls, raw: dict[bytes | str, bytes | str]) -> "RequestRecord":
        h = {_s(k): _s(v) for k, v in raw.items()}
        return cls(
            request_id=h["request_id"],
            app_id=h["app_id"],
            owner=h["owner"],
            status=RequestStatus(h["status"]),
            input=json.loads(h["input"]),
            created_at=float(h["created_at"]),
            base_url=h.get("base_url", ""),
            webhook_url=h.get("webhook_url", ""),
            started_at=float(h["started_at"]) if h.get("started_at") else None,
            completed_at=float(h["completed_at"]) if h.get("completed_at") else None,
            worker=h.get("worker", ""),
            result=json.loads(h.get("result") or "null"),
            error=json.loads(h.get("error") or "null"),
            metrics=json.loads(h.get("metrics") or "{}"),
            webhook_attempts=int(h.get("webhook_attempts", 0)),
            priority=h.get("priority") or "normal",
            no_retry=bool(h.get("no_retry")),
            runner_attempts=int(h.get("runner_attempts") or 0),
            user_timeout=bool(h.get("user_timeout")),
            files_ttl_s=int(h.get("files_ttl_s") or 0),
            run_token=h.get("run_token", ""),
            wait_s=float(h.get("wait_s") or 0),
        )

    @property
    def error_obj(self) -> LipsyncError | None:
        return LipsyncError.from_record(self.error) if self.error else None


def _stored_keys(request_input: dict[str, Any], result: dict[str, Any]) -> list[str]:
    """Storage keys that belong to one request alone: its result files and the API's copies of its inputs."""
    keys = [v["key"] for v in result.values() if isinstance(v, dict) and "key" in v]
    for value in request_input.values():
        url = value.get("url", "") if isinstance(value, dict) else ""
        if url.startswith("storage://inputs/"):
            keys.append(url.removeprefix("storage://"))
    return keys


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class Event:
    """One entry of a request's event stream: a log line or a status change."""

    id: str
    kind: str  # "log" | "status"
    data: dict[str, str]

    def log_entry(self) -> dict[str, str]:
        return {
            "message": self.data.get("message", ""),
            "level": self.data.get("level", "INFO"),
            "source": "USER",
            "timestamp": self.data.get("timestamp", ""),
        }


def parse_events(raw: list[tuple[Any, dict[Any, Any]]]) -> list[Event]:
    events = []
    for entry_id, fields in raw:
        data = {_s(k): _s(v) for k, v in fields.items()}
        events.append(Event(id=_s(entry_id), kind=data.pop("kind", "log"), data=data))
    return events


# --- Lua: each transition is atomic ---------------------------------------------------------------------

_START = """
if redis.call('HGET', KEYS[1], 'status') ~= 'IN_QUEUE' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'IN_PROGRESS', 'started_at', ARGV[1], 'worker', ARGV[2], 'run_token', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('SET', KEYS[4], ARGV[2], 'PX', ARGV[4])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[5], '*', 'kind', 'status', 'status', 'IN_PROGRESS')
return 1
"""

# KEYS: request, running, queued, heartbeat, events, webhooks_due, stats, retention, owner's in-flight set
# ARGV: completed_at, result, error, metrics, ttl, expected status or '', request id, maxlen,
#       storage keys to delete (JSON list), run token or '', seconds until those are deleted, stats fields...
_COMPLETE = """
local status = redis.call('HGET', KEYS[1], 'status')
if (not status) or status == 'COMPLETED' then return 0 end
if ARGV[6] ~= '' and status ~= ARGV[6] then return 0 end
if ARGV[10] ~= '' and redis.call('HGET', KEYS[1], 'run_token') ~= ARGV[10] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'COMPLETED', 'completed_at', ARGV[1],
           'result', ARGV[2], 'error', ARGV[3], 'metrics', ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[7])
redis.call('ZREM', KEYS[3], ARGV[7])
redis.call('DEL', KEYS[4])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[8], '*', 'kind', 'status', 'status', 'COMPLETED')
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[5], ARGV[5])
if ARGV[9] ~= '[]' then
  redis.call('ZADD', KEYS[8], ARGV[1] + ARGV[11], ARGV[7])
  redis.call('HSET', KEYS[8] .. ':keys', ARGV[7], ARGV[9])
end
redis.call('SREM', KEYS[9], ARGV[7])
if (redis.call('HGET', KEYS[1], 'webhook_url') or '') ~= '' then
  redis.call('ZADD', KEYS[6], ARGV[1], ARGV[7])
end
for i = 12, #ARGV do redis.call('HINCRBYFLOAT', KEYS[7], ARGV[i], 1) end
return 1
"""

# A runner failure with retries left: back to IN_QUEUE, unless a heartbeat came back meanwhile.
# KEYS: request, running, queued, heartbeat, events.
# ARGV: queued deadline, request id, maxlen, log line before the attempt number, timestamp, after it
_REQUEUE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'IN_PROGRESS' then return 0 end
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
local attempts = redis.call('HINCRBY', KEYS[1], 'runner_attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'IN_QUEUE', 'worker', '', 'run_token', '')
redis.call('HDEL', KEYS[1], 'started_at')
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[2])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[3], '*', 'kind', 'log', 'level', 'WARN', 'message',
           ARGV[4] .. attempts .. ARGV[6], 'timestamp', ARGV[5])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[3], '*', 'kind', 'status', 'status', 'IN_QUEUE')
return attempts
"""

# Refresh a heartbeat only for the attempt that owns the request.
_BEAT = """
if redis.call('HGET', KEYS[1], 'run_token') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3], 'XX')
return 1
"""

# Claim up to ARGV[2] due webhooks: move them from the due set to the in-flight set with a lease.
_CLAIM_WEBHOOKS = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], ARGV[3], id)
end
return ids
"""

_RESTORE_EXPIRED_LEASES = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZADD', KEYS[1], ARGV[1], id)
end
return #ids
"""


class JobStore:
    """Request records in Redis. Synchronous: workers call it directly, the API from its thread pool."""

    def __init__(self, connection: redis.Redis, *, result_ttl_s: int = 7 * 24 * 3600):
        self.r = connection
        self.result_ttl_s = result_ttl_s
        self._start = connection.register_script(_START)
        self._complete = connection.register_script(_COMPLETE)
        self._claim = connection.register_script(_CLAIM_WEBHOOKS)
        self._restore = connection.register_script(_RESTORE_EXPIRED_LEASES)
        self._requeue = connection.register_script(_REQUEUE)
        self._beat = connection.register_script(_BEAT)

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
        return _s(raw[0] or b"") == RequestStatus.IN_PROGRESS.value and _s(raw[1] or b"") == token

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
        owner = _s(record[2] or b"")
        stored = _stored_keys(json.loads(record[3] or "{}"), result or {})
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
    ) -> list[tuple[str, str]]:
        """Deal with IN_PROGRESS requests whose heartbeat lapsed and IN_QUEUE ones past their deadline.

        A lapsed request is queued again (``requeue(record, wait_s)`` puts it back on RQ) while it has
        retries left and its caller did not send X-Fal-No-Retry; else it fails ``runner_disconnected``.
        Returns (request id, "requeued" | "runner_disconnected" | "request_timeout") for each one handled.
        """
        now = time.time() if now is None else now
        reaped = []
        for raw in self.r.zrange(Keys.running, 0, -1):
            rid = _s(raw)
            if self.r.exists(Keys.heartbeat(rid)):
                continue
            record = self.get(rid)
            if record is not None and requeue is not None and not record.no_retry and record.runner_attempts < max_retries:
                if self._queue_again(record, now, max_retries, requeue):
                    reaped.append((rid, "requeued"))
                continue
            error = RunnerDisconnected("The worker running this request stopped responding (killed or lost).")
            if self.complete(rid, error=error, expected=RequestStatus.IN_PROGRESS):
                reaped.append((rid, error.error_type))
            else:
                self.r.zrem(Keys.running, rid)
        for raw in self.r.zrangebyscore(Keys.queued, "-inf", now):
            rid = _s(raw)
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
            rid = _s(raw)
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
        return [_s(i) for i in ids]

    def webhook_done(self, rid: str) -> None:
        self.r.zrem(Keys.webhooks_inflight, rid)

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
        return [_s(n) for n in self.r.zrange(Keys.workers_alive, 0, -1)]

    # --- figures for /metrics ---------------------------------------------------------------------------

    def job_stats(self) -> dict[str, float]:
        return {_s(k): float(v) for k, v in self.r.hgetall(Keys.stats).items()}

    def queued_ids(self) -> set[str]:
        """Requests waiting to start (IN_QUEUE)."""
        return {_s(raw) for raw in self.r.zrange(Keys.queued, 0, -1)}

    def counts(self) -> dict[str, int]:
        return {"running": self.r.zcard(Keys.running), "queued": self.r.zcard(Keys.queued)}
