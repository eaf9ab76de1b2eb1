"""Request records, statuses, log entries and Redis key names: what the API and the workers share.

A request's truth is one Redis hash (``RequestRecord``) plus one Redis stream of its log lines and status
changes (``Event``); ``lipsync.queue.jobs`` changes them. Torch-free and Redis-free: plain data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from lipsync.contract.errors import LipsyncError

PREFIX = "lipsync"
RUN_REQUEST = "lipsync.worker.tasks.run_request"  # the RQ job function, named so the API never imports the worker
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
        h = {as_str(k): as_str(v) for k, v in raw.items()}
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


def stored_keys(request_input: dict[str, Any], result: dict[str, Any]) -> list[str]:
    """Storage keys that belong to one request alone: its result files and the API's copies of its inputs."""
    keys = [v["key"] for v in result.values() if isinstance(v, dict) and "key" in v]
    for value in request_input.values():
        url = value.get("url", "") if isinstance(value, dict) else ""
        if url.startswith("storage://inputs/"):
            keys.append(url.removeprefix("storage://"))
    return keys


def as_str(value: bytes | str) -> str:
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
        data = {as_str(k): as_str(v) for k, v in fields.items()}
        events.append(Event(id=as_str(entry_id), kind=data.pop("kind", "log"), data=data))
    return events
