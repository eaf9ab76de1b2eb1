"""``lipsync run``: one request in this process, no server, no Redis.

The same pipeline as a worker's (``LIPSYNC_PIPELINE``), the same input validation and typed errors as the
API, a progress bar per stage. Inputs are local files (or http(s) URLs); any schema field can be set with
``--set field=value`` (the value is JSON, or a plain string).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from lipsync.contract.errors import FileDownloadError, LipsyncError
from lipsync.queue.records import LogLevel
from lipsync.contract.schema import STORAGE_SCHEME, InputInvalid, LipsyncInput, validate_input
from lipsync.contract.settings import Settings
from lipsync.worker.inputs import sniff
from lipsync.worker.job import LocalFile, PipelineJob, load_pipeline
from lipsync.worker.safe_http import DownloadError, SafeHttp


class _Progress:
    """``progress(stage, done, total)`` drawn as one tqdm bar per stage."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm, self._bars = tqdm, {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        bar = self._bars.get(stage)
        if bar is None or bar.total != total:
            if bar is not None:
                bar.close()
            bar = self._bars[stage] = self._tqdm(total=total, desc=stage, unit="step", leave=False)
        bar.n = done
        bar.refresh()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()


def _local(field: str, source: str, workdir: Path, settings: Settings) -> LocalFile:
    dest = workdir / f"input-{field}"
    if source.startswith(("http://", "https://")):
        http = SafeHttp(allow_private=True, timeout_s=settings.download_timeout_s)  # the user's own machine
        try:
            declared = http.download(source, dest, max_bytes=settings.max_input_bytes).content_type
        except DownloadError as exc:
            raise FileDownloadError(f"could not download {field}: {exc}", field=field) from None
        finally:
            http.close()
    else:
        if not Path(source).is_file():
            raise FileDownloadError(f"{field} file not found: {source}", field=field)
        shutil.copyfile(source, dest)
        declared = "application/octet-stream"
    return LocalFile(dest, sniff(field, dest, declared))


def _params(fields: dict[str, object], settings: Settings) -> LipsyncInput:
    body = {"video": STORAGE_SCHEME + "local/video", "audio": STORAGE_SCHEME + "local/audio", **fields}
    context = {"internal": True, "max_num_frames": settings.max_num_frames, "max_prompt_chars": settings.max_prompt_chars}
    return validate_input(LipsyncInput, body, context)  # type: ignore[return-value]


def parse_sets(pairs: list[str]) -> dict[str, object]:
    fields: dict[str, object] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set takes field=value, got {pair!r}")
        try:
            fields[name] = json.loads(raw)
        except json.JSONDecodeError:
            fields[name] = raw
    return fields


def run(video: str, audio: str, out: Path, fields: dict[str, object], settings: Settings) -> int:
    """Run one request; returns the process exit code (0, or 2 for a request error)."""
    started = time.perf_counter()
    progress = _Progress()
    with tempfile.TemporaryDirectory(prefix="lipsync-run-") as tmp:
        workdir = Path(tmp)
        try:
            params = _params(fields, settings)
            pipeline = load_pipeline(settings.pipeline, settings)
            inputs = {"video": _local("video", video, workdir, settings), "audio": _local("audio", audio, workdir, settings)}
            job = PipelineJob(
                request_id="local",
                params=params,
                inputs=inputs,
                workdir=workdir,
                log=lambda message, level=LogLevel.INFO: print(f"[{level.value}] {message}", file=sys.stderr),
                progress=progress,
            )
            output = pipeline(job)
        except InputInvalid as exc:
            for item in exc.detail:
                print(f"invalid_input: {item['loc'][-1]}: {item['msg']}", file=sys.stderr)
            return 2
        except LipsyncError as exc:
            where = f" ({exc.field})" if exc.field else ""
            print(f"{exc.error_type}{where}: {exc.message}", file=sys.stderr)
            return 2
        finally:
            progress.close()
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(output.files["video"].path, out)
    print(f"wrote {out} in {time.perf_counter() - started:.1f} s  {json.dumps(output.metrics)}", file=sys.stderr)
    return 0
