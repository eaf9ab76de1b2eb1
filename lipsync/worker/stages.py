"""A bounded pipeline of stages: each stage is an iterator run in its own thread, feeding the next through a
queue of a few items, so decode, crop, model, paste and encode overlap (PyAV, OpenCV, NumPy and torch release
the GIL in their heavy calls) while memory stays bounded by the queue sizes.

    with Stages() as stages:
        frames = stages.run(decode(), name="decode")          # decoding runs ahead, at most 2 chunks
        for chunk in stages.run(paste(frames), name="paste"):
            ...

An exception in any stage (a cancel raised by ``job.progress``, a decode error) reaches the consumer of that
stage as itself; leaving the ``with`` block (normally or by an exception) stops every stage and closes their
iterators (so their files and codecs are closed) before it returns. A stage that works long between items (the
model: a whole denoise before its first chunk) learns of the stop through ``guard``: its progress callback
raises ``StagesStopped`` at its next step, so a timeout or a failed stage frees the GPU within one step.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

_ITEM, _END, _ERROR = range(3)
_POLL_S = 0.1
JOIN_TIMEOUT_S = 60.0
"""Longest wait for a stage thread at exit; every stage checks the stop far more often (a chunk or a step)."""


class StagesStopped(RuntimeError):
    """Raised in a stage still waiting for input after the pipeline was stopped."""


class Stages:
    def __init__(self, *, queue_size: int = 2, threaded: bool = True):
        self.queue_size = queue_size
        self.threaded = threaded
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.cpu_s: dict[str, float] = {}
        """CPU seconds each stage's thread used (its own work; native threads of codecs not included)."""

    def run(self, items: Iterable[T], *, name: str, queue_size: int | None = None,
            handoff: bool = False) -> Iterator[T]:
        """Start pulling ``items`` in a thread now; returns the iterator over what it produces. With
        ``threaded=False`` (``LIPSYNC_STAGE_THREADS=false``: profiling, debugging) it is ``items`` itself.

        ``handoff``: the thread pulls the next item only once the consumer has taken the last one (for large
        items: at most two alive, the one the consumer works on and the one being made, and still made while
        the consumer works)."""
        if not self.threaded:
            return iter(items)
        q: queue.Queue = queue.Queue(queue_size or self.queue_size)

        def produce() -> None:
            started = time.thread_time()
            try:
                for item in items:
                    if not self._put(q, (_ITEM, item)):
                        return
                    del item  # not held while the next is made
                    if handoff and not self._taken(q):
                        return
                self._put(q, (_END, None))
            except BaseException as exc:  # handed to the consumer, who re-raises it
                self._put(q, (_ERROR, exc))
            finally:
                close = getattr(items, "close", None)
                if close is not None:
                    close()
                with self._lock:
                    self.cpu_s[name] = self.cpu_s.get(name, 0.0) + time.thread_time() - started

        thread = threading.Thread(target=produce, name=f"lipsync-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()
        return self._consume(q)

    def guard(self, progress: Callable[[str, int, int], None]) -> Callable[[str, int, int], None]:
        """``progress`` that first raises ``StagesStopped`` once the pipeline is stopped (a timeout or an error
        elsewhere), for stages that report progress between their items."""
        def guarded(stage: str, done: int, total: int) -> None:
            if self._stop.is_set():
                raise StagesStopped("the pipeline was stopped")
            progress(stage, done, total)
        return guarded

    def _put(self, q: queue.Queue, entry: tuple) -> bool:
        while not self._stop.is_set():
            try:
                q.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _taken(self, q: queue.Queue) -> bool:
        """Wait until the consumer has taken everything put in ``q``; False when the pipeline stopped first."""
        with q.all_tasks_done:
            while q.unfinished_tasks:
                if self._stop.is_set():
                    return False
                q.all_tasks_done.wait(_POLL_S)
        return True

    def _consume(self, q: queue.Queue) -> Iterator:
        while True:
            try:
                kind, item = q.get(timeout=_POLL_S)
            except queue.Empty:
                if self._stop.is_set():
                    raise StagesStopped("the pipeline was stopped") from None
                continue
            q.task_done()  # taken (``handoff``)
            if kind == _END:
                return
            if kind == _ERROR:
                raise item
            yield item

    def __enter__(self) -> "Stages":
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT_S)
            if thread.is_alive():  # a daemon thread: it cannot keep the worker alive, but say so
                log.error("stage thread %s still running %.0f s after the stop", thread.name, JOIN_TIMEOUT_S)
