"""Carrying requests to workers over RQ: which queue a request goes to, its place there, and queueing again.

Every app has two RQ queues: ``<queue>`` for ``normal`` priority and ``<queue>-low`` for ``low``
(``x-fal-queue-priority``). Workers listen on every normal queue before any low one, and RQ takes from the
first non-empty queue in that order, so a low request waits behind every normal one.

The API (submit, cancel, position) and every housekeeper (queueing a request again after its worker died)
share this; the job id is always the request id and the one argument is that id.
"""

from __future__ import annotations

import math

import redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry

from lipsync.queue.records import PREFIX, RUN_REQUEST, RequestRecord
from lipsync.contract.settings import Settings

PRIORITIES = ("normal", "low")
LOW_SUFFIX = "-low"


def worker_queue_names(settings: Settings) -> list[str]:
    """The queues a worker serves, in the order it serves them: all normal queues, then all low ones."""
    normal = sorted({app.queue for app in settings.apps.values()})
    return normal + [name + LOW_SUFFIX for name in normal]


class Dispatcher:
    def __init__(self, settings: Settings, connection: redis.Redis):
        self.settings = settings
        self.r = connection
        self.queues = {name: Queue(name, connection=connection) for name in worker_queue_names(settings)}

    def queue_for(self, record: RequestRecord) -> Queue:
        name = self.settings.apps[record.app_id].queue
        return self.queues[name + (LOW_SUFFIX if record.priority == "low" else "")]

    def enqueue(self, record: RequestRecord, wait_s: float, pipe: redis.client.Pipeline | None = None) -> None:
        self.queue_for(record).enqueue_call(
            RUN_REQUEST,
            args=(record.request_id,),
            job_id=record.request_id,
            timeout=self.settings.job_timeout_s,
            result_ttl=600,
            failure_ttl=self.settings.result_ttl_s,
            ttl=max(1, math.ceil(wait_s)),
            pipeline=pipe,
        )

    def requeue(self, record: RequestRecord, wait_s: float) -> None:
        """Queue a request again after its worker died (the record is already IN_QUEUE again).

        The dead worker's RQ bookkeeping for the same job id goes first, so RQ's own clean-up of abandoned
        jobs never touches the new attempt.
        """
        queue = self.queue_for(record)
        for registry in (StartedJobRegistry(queue=queue), FailedJobRegistry(queue=queue)):
            self.r.zrem(registry.key, record.request_id)
        self.enqueue(record, wait_s)

    def position(self, record: RequestRecord) -> int:
        """Requests ahead of this one: for a low one, every queued normal request counts too."""
        queue = self.queue_for(record)
        position = queue.get_job_position(record.request_id)
        ahead = 0
        if record.priority == "low":
            ahead = self.queues[self.settings.apps[record.app_id].queue].count
        return ahead + (int(position) if position is not None else 0)

    def queued_ids(self) -> set[str]:
        """Every request id on any of our RQ queues (one LRANGE per queue)."""
        pipe = self.r.pipeline()
        for queue in self.queues.values():
            pipe.lrange(queue.key, 0, -1)
        return {raw.decode() if isinstance(raw, bytes) else raw for ids in pipe.execute() for raw in ids}

    def claim_redispatch(self, request_id: str, hold_s: float) -> bool:
        """One process at a time may put a lost request back (the others see the claim and skip it)."""
        return bool(self.r.set(f"{PREFIX}:redispatch:{request_id}", 1, nx=True, ex=max(1, int(hold_s))))

    def drop(self, request_id: str) -> None:
        """Take a request that will never run (it waited too long) off whichever queue holds it."""
        pipe = self.r.pipeline()
        for queue in self.queues.values():
            pipe.lrem(queue.key, 0, request_id)
        pipe.execute()

    def cancel_queued(self, record: RequestRecord) -> None:
        try:
            job = Job.fetch(record.request_id, connection=self.r)
        except Exception:  # NoSuchJobError or an unreadable job: nothing left to take off the queue
            return
        if job.get_status(refresh=True) == "queued":
            job.cancel()
