"""The GPU worker: an RQ ``SimpleWorker`` (no fork per job, so the model and CUDA state stay loaded).

Added to the stock class (reference/rq-workers.md, "Recommended design"):
- the pipeline is loaded once, in ``__init__``, before the first job;
- a heartbeat thread while a job runs, refreshing both our request heartbeat (what the reaper reads: a
  SIGKILLed worker's request fails within ``heartbeat_ttl_s`` + ``reaper_interval_s``) and RQ's own;
- background threads for webhook delivery and reaping, so a cluster without a live API still heals.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import redis
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.worker.base import BaseWorker

from lipsync.queue.dispatch import Dispatcher, worker_queue_names
from lipsync.contract.settings import Settings
from lipsync.queue.housekeeping import Housekeeper
from lipsync.queue.jobs import redis_unavailable
from lipsync.queue.records import PREFIX
from lipsync.queue.throttle import Throttled
from lipsync.worker.runtime import WorkerRuntime
from lipsync.worker.tasks import bind_runtime
from lipsync.worker.webhooks import WebhookDispatcher

log = logging.getLogger("lipsync.worker")


class LipsyncWorker(SimpleWorker):
    # The RQ registry entry then lives interval + 60 s, not job timeout + 60 s (SimpleWorker's default).
    get_heartbeat_ttl = BaseWorker.get_heartbeat_ttl

    def __init__(self, *args: Any, settings: Settings, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.settings = settings
        self.runtime = WorkerRuntime.create(settings, self.name, self.connection)
        bind_runtime(self.runtime)
        self.webhooks = WebhookDispatcher(settings, self.runtime.store, self.runtime.storage, self.runtime.http)
        self.webhooks.start()
        self._stop_maintenance = threading.Event()
        self._warn = Throttled(log)  # beats fail every interval while Redis is away: one line a minute
        threading.Thread(target=self._housekeep, name="housekeeping", daemon=True).start()
        threading.Thread(target=self._liveness, name="liveness", daemon=True).start()

    def _housekeep(self) -> None:
        dispatcher = Dispatcher(self.settings, self.connection)
        housekeeper = Housekeeper(self.runtime.store, self.runtime.storage, self.settings, dispatcher=dispatcher)
        while not self._stop_maintenance.wait(self.settings.reaper_interval_s):
            housekeeper.tick()

    def _liveness(self) -> None:
        """What /readyz counts: refreshed every heartbeat interval, lapses after heartbeat_ttl_s."""
        while True:
            try:
                self.runtime.store.worker_alive(self.name, self.settings.heartbeat_ttl_s)
            except redis.RedisError as exc:
                self._warn.warning("liveness", "liveness beat failed: %s", str(exc)[:200])
            if self._stop_maintenance.wait(self.settings.heartbeat_interval_s):
                return

    # RQ's work loop retries a lost Redis only around dequeue; anywhere else a ConnectionError ends the worker,
    # and a Redis that refuses writes (MISCONF, a full disk) ends it everywhere. These wait for Redis instead:
    # the request's record is the truth, and the reaper retries what was lost.

    def _ride_out(self, what: str, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except redis.RedisError as exc:
            if not redis_unavailable(exc):
                raise
            log.warning("redis unavailable during %s (%s); waiting for it", what, str(exc)[:200])
            self._wait_for_redis()
            return None

    def _wait_for_redis(self) -> None:
        """Until Redis takes a write again (a ping alone passes while it refuses writes)."""
        delay = 0.5
        while not self._stop_requested:
            try:
                self.connection.set(f"{PREFIX}:probe:{self.name}", 1, px=10_000)
                log.info("redis is back")
                return
            except redis.RedisError as exc:
                if not redis_unavailable(exc):
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def subscribe(self) -> None:
        """RQ's own, with a 1 s poll instead of 60 s: at stop, RQ joins this thread with no timeout, and
        redis-py's poll that saw the UNSUBSCRIBE first then waits its whole poll for a subscription that never
        comes (an idle worker took 30-60 s to stop, one stop in three)."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=1, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    def register_birth(self) -> None:
        while self._ride_out("registration", lambda: super(LipsyncWorker, self).register_birth() or True) is None:
            if self._stop_requested:
                return

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        while True:
            try:
                return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            except redis.RedisError as exc:
                if not redis_unavailable(exc) or self._stop_requested:
                    raise
                log.warning("redis refuses the dequeue (%s); waiting for it", str(exc)[:200])
                self._wait_for_redis()

    def check_for_suspension(self, burst: bool) -> None:
        self._ride_out("the suspension check", super().check_for_suspension, burst)

    def run_maintenance_tasks(self) -> None:
        self._ride_out("maintenance", super().run_maintenance_tasks)

    def heartbeat(self, *args: Any, **kwargs: Any) -> None:
        self._ride_out("the worker heartbeat", lambda: super(LipsyncWorker, self).heartbeat(*args, **kwargs))

    def execute_job(self, job: Job, queue: Queue) -> None:
        self._ride_out(f"job {job.id}", self._execute_job, job, queue)

    def _execute_job(self, job: Job, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job, execution, stop), name="heartbeat", daemon=True)
        beat.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            stop.set()
            beat.join()
            self.webhooks.wake()  # this request's webhook (if any) is due now: no wait for the next poll
        self.set_state("idle")

    def _heartbeat(self, job: Job, execution: Any, stop: threading.Event) -> None:
        interval, ttl = self.settings.heartbeat_interval_s, self.settings.heartbeat_ttl_s
        rid = job.id
        while not stop.wait(interval):
            try:
                if stop.is_set():
                    return
                if self.runtime.token:
                    self.runtime.store.heartbeat(rid, self.name, ttl, self.runtime.token)
                self.maintain_heartbeats(job, execution)
            except redis.RedisError as exc:
                self._warn.warning("heartbeat", "heartbeat for %s failed: %s", rid, str(exc)[:200])

    def teardown(self) -> None:
        self._stop_maintenance.set()
        with contextlib.suppress(redis.RedisError):
            self.runtime.store.worker_gone(self.name)
        self.webhooks.stop()
        self.runtime.http.close()
        try:
            super().teardown()
        except redis.RedisError as exc:  # registration lapses by its TTL
            log.warning("could not unregister from redis: %s", str(exc)[:200])


def run_worker(settings: Settings, *, name: str | None = None, queues: list[str] | None = None, burst: bool = False) -> None:
    connection = redis.Redis.from_url(settings.redis_url, health_check_interval=30)
    queue_names = queues or worker_queue_names(settings)  # normal queues first: low ones wait behind them
    worker = LipsyncWorker(
        [Queue(q, connection=connection) for q in queue_names],
        name=name,
        connection=connection,
        settings=settings,
        job_monitoring_interval=max(int(settings.heartbeat_interval_s), 1),
    )
    worker.work(burst=burst, logging_level="INFO")
