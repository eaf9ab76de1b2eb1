"""The queue service: what submit, status, result and cancel do, with no HTTP in it.

Routers call these methods and turn their answers into the protocol's bodies; the methods raise
``LipsyncError`` subclasses (not HTTPException) for the routers' one error handler.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis
from pydantic import BaseModel

from lipsync.queue.admission import Admission
from lipsync.queue.dispatch import Dispatcher
from lipsync.contract.errors import InvalidInput
from lipsync.queue.jobs import JobStore
from lipsync.queue.records import RequestRecord, RequestStatus
from lipsync.contract.schema import STORAGE_SCHEME, File, file_fields, parse_data_uri, validate_input
from lipsync.contract.settings import AppConfig, Settings
from lipsync.server.errors import NotFound, StillRunning, TooManyRequests
from lipsync.storage import Signer, Storage, public_result, safe_key
from lipsync.storage.filesystem import parse_file_path


@dataclass(frozen=True)
class SubmitOptions:
    """What a submit's headers ask for, already checked (lipsync/server/routers/queue.py reads them)."""

    start_timeout_s: float | None = None  # X-Fal-Request-Timeout: longest wait before a worker starts it
    priority: str = "normal"  # x-fal-queue-priority
    no_retry: bool = False  # X-Fal-No-Retry
    files_ttl_s: int = 0  # X-Fal-Object-Lifecycle-Preference expiration; 0: the server's retention


@dataclass(frozen=True)
class App:
    app_id: str
    config: AppConfig
    input_model: type[BaseModel]


def load_apps(settings: Settings) -> dict[str, App]:
    return {app_id: App(app_id, config, config.load_input_model()) for app_id, config in settings.apps.items()}


class QueueService:
    def __init__(self, settings: Settings, connection: redis.Redis, storage: Storage, signer: Signer):
        self.settings = settings
        self.r = connection
        self.store = JobStore(connection, result_ttl_s=settings.result_ttl_s)
        self.admission = Admission(
            connection, rate_per_minute=settings.rate_limit_per_minute, max_inflight=settings.max_inflight_per_key
        )
        self.storage = storage
        self.signer = signer
        self.apps = load_apps(settings)
        self.dispatcher = Dispatcher(settings, connection)
        self.queues = self.dispatcher.queues

    # --- apps -----------------------------------------------------------------------------------------

    def resolve(self, app_path: str) -> tuple[App, str]:
        """Split ``owner/alias[/sub-path]`` into a configured app and its sub-path."""
        path = app_path.strip("/")
        for app_id, app in self.apps.items():
            if path == app_id or path.startswith(app_id + "/"):
                return app, path[len(app_id) + 1 :]
        raise NotFound(f"Application '{path}' not found")

    # --- submit ---------------------------------------------------------------------------------------

    def submit(
        self,
        app: App,
        owner: str,
        body: Any,
        *,
        base_url: str,
        webhook_url: str | None,
        options: SubmitOptions = SubmitOptions(),
    ) -> RequestRecord:
        """Validate, store data: URIs, and queue the request in one transaction with its record."""
        context = {
            "max_num_frames": self.settings.max_num_frames,
            "max_prompt_chars": self.settings.max_prompt_chars,
            "max_input_bytes": self.settings.max_input_bytes,
        }
        params = validate_input(app.input_model, body, context)
        rid = str(uuid.uuid4())
        refusal = self.admission.admit(owner, rid)
        if refusal is not None:
            limit = (
                f"{self.settings.max_inflight_per_key} unfinished requests"
                if refusal.reason == "inflight"
                else f"{self.settings.rate_limit_per_minute} requests a minute"
            )
            raise TooManyRequests(f"Too many requests: this key may have {limit}", refusal.retry_after_s)
        normalized = params.model_dump(mode="json")
        for name, file in file_fields(params).items():
            normalized[name] = self._internalize(rid, name, file).model_dump(mode="json")
        now = time.time()
        start_timeout_s = options.start_timeout_s
        wait_s = min(self.settings.queued_ttl_s, start_timeout_s or self.settings.queued_ttl_s)
        files_ttl = options.files_ttl_s
        record = RequestRecord(
            request_id=rid,
            app_id=app.app_id,
            owner=owner,
            status=RequestStatus.IN_QUEUE,
            input=normalized,
            created_at=now,
            base_url=base_url,
            webhook_url=webhook_url or "",
            priority=options.priority,
            no_retry=options.no_retry,
            user_timeout=start_timeout_s is not None and start_timeout_s <= self.settings.queued_ttl_s,
            files_ttl_s=min(files_ttl, self.settings.result_ttl_s) if files_ttl else 0,
            wait_s=wait_s,
        )
        with self.r.pipeline() as pipe:
            pipe.multi()  # one transaction: the record exists exactly when its job is queued
            self.store.create(record, queued_deadline=now + wait_s, pipe=pipe)
            self.dispatcher.enqueue(record, wait_s, pipe)
            pipe.execute()
        return record


    def _internalize(self, rid: str, field: str, file: File) -> File:
        """Data URIs and our own upload URLs become ``storage://`` keys; other URLs stay for the worker."""
        if file.url.lower().startswith("data:"):
            content_type, data = parse_data_uri(file.url)  # its size was checked in validation
            key = f"inputs/{rid}/{field}"
            self.storage.put_chunks(key, [data], content_type, self.settings.max_input_bytes)
            internal = {"url": STORAGE_SCHEME + key, "content_type": content_type, "file_size": len(data)}
            return File.model_validate(internal, context={"internal": True})
        key = self.own_file_key(file.url, field)
        if key is not None:
            return file.model_copy(update={"url": STORAGE_SCHEME + key})
        return file

    def own_file_key(self, url: str, field: str) -> str | None:
        """The storage key behind one of our signed file URLs, or None for a foreign URL."""
        signed = parse_file_path(urlsplit(url).path)
        if signed is None:
            return None
        expires, signature, key = signed
        try:
            safe_key(key)
        except ValueError:
            return None
        if not self.signer.verify("get", key, expires, signature):
            raise InvalidInput("upload URL has expired or its signature is not valid", field=field)
        if self.storage.stat(key) is None:
            raise InvalidInput("upload URL points to a file that does not exist", field=field)
        return key

    # --- read -----------------------------------------------------------------------------------------

    def get(self, app: App, owner: str, rid: str) -> RequestRecord:
        record = self.store.get(rid) if _is_uuid(rid) else None
        if record is None or record.owner != owner or record.app_id != app.app_id:
            raise NotFound(f"Request '{rid}' not found")
        return record

    def queue_position(self, record: RequestRecord) -> int:
        return self.dispatcher.position(record)

    def result_body(self, record: RequestRecord) -> dict[str, Any]:
        """The output JSON with signed URLs; raises the request's error when it failed."""
        if record.status is not RequestStatus.COMPLETED:
            raise StillRunning("Request is still in progress")
        if record.error_obj is not None:
            raise record.error_obj
        return self.sign_result(record)

    def sign_result(self, record: RequestRecord) -> dict[str, Any]:
        ttl_s = min(record.files_ttl_s or self.settings.url_ttl_s, self.settings.url_ttl_s)
        return public_result(record.result or {}, self.storage, base_url=record.base_url, ttl_s=ttl_s)

    # --- cancel ---------------------------------------------------------------------------------------

    def cancel(self, record: RequestRecord) -> RequestStatus:
        status = self.store.request_cancel(record.request_id)
        if status is RequestStatus.IN_QUEUE:
            self.dispatcher.cancel_queued(record)
        return status


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


