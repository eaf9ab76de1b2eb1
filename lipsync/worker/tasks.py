"""The RQ job function. RQ imports it by name (``lipsync.worker.tasks.run_request``); it hands over to the runtime
that the worker process built when it started, with the pipeline already loaded."""

from __future__ import annotations

from lipsync.worker.runtime import WorkerRuntime

_runtime: WorkerRuntime | None = None


def bind_runtime(runtime: WorkerRuntime) -> None:
    """Called once by the worker process; RQ job functions have no other way to reach long-lived state."""
    global _runtime
    _runtime = runtime


def run_request(request_id: str) -> None:
    if _runtime is None:
        raise RuntimeError("run_request needs a worker started with `lipsync worker` (no runtime bound)")
    _runtime.run(request_id)
