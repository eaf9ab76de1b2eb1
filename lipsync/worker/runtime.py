"""A worker process's long-lived state (pipeline, storage, Redis) and one request's life in it.

``WorkerRuntime.run(request_id)`` is the whole job: claim the request, fetch its inputs, run the pipeline
with progress and cancel, upload the output, record completion. Every failure ends the request with a typed
error; nothing escapes to RQ, whose own job status is only transport.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from rq.timeouts import JobTimeoutException

from lipsync.contract.errors import (
    FULL_ERRNOS, InternalError, LipsyncError, RequestCancelled, RequestTimeout, storage_error,
)
from lipsync.queue.jobs import JobStore, redis_unavailable
from lipsync.queue.records import LogLevel, RequestRecord
from lipsync.contract.schema import STORAGE_SCHEME, file_fields, validate_input
from lipsync.contract.settings import Settings
from lipsync.storage import Storage, make_signer, make_storage
from lipsync.worker.inputs import fetch_input
from lipsync.worker.job import Pipeline, PipelineJob, PipelineOutput, load_pipeline
from lipsync.worker.safe_http import SafeHttp
from lipsync.worker.video_cache import VideoCache, fetch_video

log = logging.getLogger("lipsync.worker")

PROGRESS_LOG_INTERVAL_S = 1.0
CANCEL_CHECK_INTERVAL_S = 0.1
RECORD_RETRY_S = 30.0
_PATH = re.compile(r"(?<![\w:/])/(?:[^\s'\"/]+/)+[^\s'\"]*")  # an absolute path in an exception's text
WORKDIR_PREFIX = "lipsync-w"  # + "<pid>-<request id>-": a dead worker's folders are found by their pid


class LostOwnership(Exception):
    """This attempt no longer owns its request: its heartbeat lapsed and the request was queued again.

    Not a LipsyncError: nothing is recorded, the attempt that owns it now finishes it.
    """


def sweep_dead_workdirs(base: Path | None = None) -> int:
    """Delete work folders left by worker processes that died (SIGKILL, OOM); returns how many."""
    base = base or Path(tempfile.gettempdir())
    removed = 0
    for folder in base.glob(f"{WORKDIR_PREFIX}*-*"):
        pid = folder.name[len(WORKDIR_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerRuntime:
    def __init__(self, settings: Settings, name: str, connection: redis.Redis, pipeline: Pipeline):
        self.settings = settings
        self.name = name
        self.r = connection
        self.store = JobStore(connection, result_ttl_s=settings.result_ttl_s)
        self.storage: Storage = make_storage(settings, make_signer(settings))
        self.http = SafeHttp(allow_private=settings.allow_private_urls, timeout_s=settings.download_timeout_s)
        self.pipeline = pipeline
        self.video_cache = VideoCache.from_settings(settings)  # uploads seen before: no download, no hashing
        self.input_models = {app_id: cfg.load_input_model() for app_id, cfg in settings.apps.items()}
        self.token = ""  # the running attempt's token ("" between jobs); the heartbeat thread reads it
        removed = sweep_dead_workdirs()
        if removed:
            log.info("removed %d work folders of dead workers", removed)

    @classmethod
    def create(cls, settings: Settings, name: str, connection: redis.Redis) -> "WorkerRuntime":
        started = time.perf_counter()
        pipeline = load_pipeline(settings.pipeline, settings)
        log.info("pipeline %r loaded in %.1f s", settings.pipeline, time.perf_counter() - started)
        return cls(settings, name, connection, pipeline)

    # --- one request ------------------------------------------------------------------------------------

    def run(self, rid: str) -> None:
        record = self.store.get(rid)
        if record is None:
            log.warning("request %s has expired; skipping", rid)
            return
        token = uuid.uuid4().hex
        if not self.store.start(rid, self.name, self.settings.heartbeat_ttl_s, token):
            log.info("request %s already finished (cancelled?) or started elsewhere; skipping", rid)
            return
        self.token = token
        if record.runner_attempts:
            self.store.log(rid, f"Worker {self.name} took over the request (retry {record.runner_attempts})")
        workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-{rid[:8]}-"))
        metrics: dict[str, Any] = {"queue_time": round(time.time() - record.created_at, 3)}
        finished = False  # True once this attempt's outcome is recorded: only then may its inputs go
        try:
            try:
                result = self._run(record, workdir, metrics)
            except (LostOwnership, redis.RedisError):
                raise
            except LipsyncError as err:
                finished = self._fail(rid, err, metrics)
            except JobTimeoutException:
                error = RequestTimeout(f"Request ran longer than {self.settings.job_timeout_s} s")
                finished = self._fail(rid, error, metrics)
            except Exception as exc:  # a bug or a crash in the pipeline: the request fails, the worker lives on
                log.error("request %s crashed:\n%s", rid, traceback.format_exc())
                if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:  # the worker's own disk: say so
                    error = storage_error(exc, "The worker ran out of disk space")
                else:  # the user sees what failed, not where on the server
                    error = InternalError(f"Pipeline failed: {type(exc).__name__}: {_PATH.sub('<path>', str(exc))}")
                finished = self._fail(rid, error, metrics)
            else:
                finished = self._record(lambda: self.store.complete(rid, result=result, metrics=metrics, token=token))
                if finished:
                    log.info("request %s completed in %.2f s", rid, metrics.get("total_time", 0.0))
                else:
                    log.warning("request %s was finished or taken over meanwhile; result dropped", rid)
        except LostOwnership:
            log.warning("request %s was queued again while this worker ran it; dropping this attempt", rid)
        except redis.RedisError as exc:
            # Redis went away mid-request: the reaper queues the request again once Redis is back.
            log.warning("request %s: redis unavailable (%s); leaving it to the reaper's retry", rid, exc)
        finally:
            self.token = ""
            shutil.rmtree(workdir, ignore_errors=True)
            if finished:  # a later attempt still needs the inputs
                self._delete_unpacked_inputs(record)

    def _delete_unpacked_inputs(self, record: RequestRecord) -> None:
        """The API's copies of data: URIs (``inputs/<id>/…``) serve this request alone: drop them once it ends."""
        prefix = f"{STORAGE_SCHEME}inputs/{record.request_id}/"
        for value in record.input.values():
            url = value.get("url", "") if isinstance(value, dict) else ""
            if url.startswith(prefix):
                self.storage.delete(url[len(STORAGE_SCHEME):])

    def _run(self, record: RequestRecord, workdir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
        rid, started = record.request_id, time.perf_counter()
        context = {"internal": True, "max_num_frames": self.settings.max_num_frames,
                   "max_prompt_chars": self.settings.max_prompt_chars}  # the bounds the API checked against
        params = validate_input(self.input_models[record.app_id], record.input, context)
        progress = ProgressReporter(self.store, rid, self.token)

        self.store.log(rid, "Fetching inputs")
        inputs = {}
        for field, file in file_fields(params).items():
            fetch = functools.partial(
                fetch_input, field, file, workdir, storage=self.storage, http=self.http,
                max_bytes=self.settings.max_input_bytes, check=progress.check_cancel,
            )
            if field == "video" and self.video_cache is not None and not getattr(params, "skip_video_cache", False):
                inputs[field], metrics["input_cache"] = fetch_video(self.video_cache, file.url, fetch, self.storage,
                                                                    workdir / f"input-{field}")
            else:
                inputs[field] = fetch()
        metrics["fetch_time"] = round(time.perf_counter() - started, 3)
        progress.check_cancel()

        t0 = time.perf_counter()
        output = self.pipeline(
            PipelineJob(
                request_id=rid,
                params=params,
                inputs=inputs,
                workdir=workdir,
                log=lambda message, level=LogLevel.INFO: self.store.log(rid, message, level),
                progress=progress,
            )
        )
        metrics["inference_time"] = round(time.perf_counter() - t0, 3)
        metrics.update(output.metrics)
        progress.check_cancel()

        t0 = time.perf_counter()
        self.store.log(rid, "Uploading result")
        result = self._upload(rid, output)
        metrics["upload_time"] = round(time.perf_counter() - t0, 3)
        metrics["total_time"] = round(time.perf_counter() - started, 3)
        return result

    def _upload(self, rid: str, output: PipelineOutput) -> dict[str, Any]:
        result = {}
        for name, out in output.files.items():
            key = f"results/{rid}/{out.file_name}"
            try:
                stored = self.storage.put_file(key, out.path, out.content_type)
            except OSError as exc:
                raise storage_error(exc, "Could not store the result") from None
            result[name] = {
                "key": stored.key,
                "content_type": stored.content_type,
                "file_name": out.file_name,
                "file_size": stored.size,
            }
        return result

    def _fail(self, rid: str, err: LipsyncError, metrics: dict[str, Any]) -> bool:
        if not self.store.owns(rid, self.token):
            log.warning("request %s failed (%s) after it was taken over; not recorded", rid, err.error_type)
            return False
        level = LogLevel.WARN if isinstance(err, RequestCancelled) else LogLevel.ERROR
        self.store.log(rid, f"{err.error_type}: {err.message}", level)
        done = self._record(lambda: self.store.complete(rid, error=err, metrics=metrics, token=self.token))
        log.info("request %s ended with %s: %s", rid, err.error_type, err.message)
        return done

    def _record(self, complete: Callable[[], bool]) -> bool:
        """Record an outcome, riding out a Redis restart or write refusal of up to ``RECORD_RETRY_S`` (the work
        is done)."""
        deadline = time.monotonic() + RECORD_RETRY_S
        while True:
            try:
                return complete()
            except redis.RedisError as exc:
                if not redis_unavailable(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


class ProgressReporter:
    """``progress(stage, done, total)`` for pipelines: logs at most once a second a stage, checks cancel
    and that this attempt still owns the request."""

    def __init__(self, store: JobStore, rid: str, token: str = ""):
        self.store, self.rid, self.token = store, rid, token
        self._last_log: dict[str, float] = {}
        self._last_check = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - self._last_log.get(stage, 0.0) >= PROGRESS_LOG_INTERVAL_S:
            self._last_log[stage] = now
            self.store.log(self.rid, f"{stage} {done}/{total}")
        if now - self._last_check >= CANCEL_CHECK_INTERVAL_S:
            self._last_check = now
            self.check_cancel()

    def check_cancel(self) -> None:
        if self.token and not self.store.owns(self.rid, self.token):
            raise LostOwnership(self.rid)
        if self.store.is_cancel_requested(self.rid):
            raise RequestCancelled()
