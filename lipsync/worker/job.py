"""The pipeline interface: what a worker runs for one request.

A pipeline is loaded once per worker process and called once per request:
``pipeline(job: PipelineJob) -> PipelineOutput``. It reads its inputs from local files, reports progress
through ``job.progress`` (which also raises ``RequestCancelled`` when the user cancelled: the pipeline stops at
its next step), and writes its output files into ``job.workdir``. It never touches Redis, HTTP or storage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from lipsync.queue.records import LogLevel
from lipsync.contract.settings import Settings


@dataclass(frozen=True)
class LocalFile:
    path: Path
    content_type: str  # sniffed from the bytes when possible, else what the source declared
    digest: str | None = None  # BLAKE2b-256 hex of the bytes, when known (lipsync.worker.video_cache)


@dataclass(frozen=True)
class OutputFile:
    path: Path
    content_type: str
    file_name: str


@dataclass
class PipelineJob:
    request_id: str
    params: BaseModel  # the validated input (e.g. lipsync.contract.schema.LipsyncInput)
    inputs: dict[str, LocalFile]  # one per file field of the input
    workdir: Path
    log: Callable[[str, LogLevel], None]
    progress: Callable[[str, int, int], None]  # (stage, done, total); raises RequestCancelled on cancel


@dataclass
class PipelineOutput:
    files: dict[str, OutputFile]  # output field -> file; becomes {"field": File} in the result
    metrics: dict[str, Any] = field(default_factory=dict)


class Pipeline(Protocol):
    def __call__(self, job: PipelineJob) -> PipelineOutput: ...


# Named pipelines a worker can load with LIPSYNC_PIPELINE; anything else is read as "module:attribute".
REGISTRY: dict[str, str] = {"lipsync": "lipsync.worker.orchestration:load_lipsync_pipeline"}


def load_pipeline(name: str, settings: Settings) -> Pipeline:
    """Import and build a pipeline. A factory attribute is called with the settings; a class is instantiated."""
    target = REGISTRY.get(name, name)
    module_name, sep, attr = target.partition(":")
    if not sep:
        known = ", ".join(sorted(REGISTRY)) or "none yet"
        raise ValueError(f"unknown pipeline {name!r}: use a registered name ({known}) or 'module:attribute'")
    factory = getattr(import_module(module_name), attr)
    return factory(settings)
