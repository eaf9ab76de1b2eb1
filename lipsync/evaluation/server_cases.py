"""``lipsync eval --server``: submit each case through the official Python client (``fal-client``), wait,
download the output, and hand back local (source, audio, output) triples to score."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import httpx

from lipsync.evaluation.cases import Case, ServerCase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FailedCase:
    name: str
    error: str


def _is_url(value: str) -> bool:
    return bool(re.match(r"^(https?|data):", value))


def _download(url: str, path: Path, timeout: float) -> Path:
    with httpx.stream("GET", url, follow_redirects=True, timeout=timeout) as response:
        response.raise_for_status()
        with open(path, "wb") as fh:
            for block in response.iter_bytes():
                fh.write(block)
    return path


def _local(value: str, path_stem: Path, timeout: float) -> Path | None:
    """A local copy of an input (for CSIM and the unchanged region); None for data: URIs."""
    if not _is_url(value):
        return Path(value)
    if value.startswith("data:"):
        return None
    suffix = Path(httpx.URL(value).path).suffix or ".bin"
    return _download(value, path_stem.with_suffix(suffix), timeout)


def run_on_server(
    base_url: str, cases: list[ServerCase], out_dir: Path, *, key: str, app: str = "pipio/lipsync",
    timeout: float = 600.0, progress=None,
) -> list[Case | FailedCase]:
    """Submit, wait for and download every case in turn; a failed request becomes a FailedCase."""
    import fal_client

    from lipsync.client import point_fal_client

    point_fal_client(base_url)
    client = fal_client.SyncClient(key=key, default_timeout=timeout)
    outputs = out_dir / "outputs"
    outputs.mkdir(parents=True, exist_ok=True)
    done: list[Case | FailedCase] = []
    for case in cases:
        for missing in [v for v in (case.video, case.audio) if not _is_url(v) and not Path(v).is_file()]:
            done.append(FailedCase(case.name, f"no such file: {missing}"))
            break
        else:
            done.append(_one(client, app, case, outputs, timeout))
        if progress is not None:
            progress(case.name)
    return done


def _one(client, app: str, case: ServerCase, outputs: Path, timeout: float) -> Case | FailedCase:
    try:
        args = {
            "video": case.video if _is_url(case.video) else client.upload_file(case.video),
            "audio": case.audio if _is_url(case.audio) else client.upload_file(case.audio),
            **case.arguments,
        }
        result = client.subscribe(app, arguments=args, client_timeout=timeout)
        output = _download(result["video"]["url"], outputs / f"{case.name}.mp4", timeout)
        source = _local(case.video, outputs / f"{case.name}.source", timeout)
        audio = _local(case.audio, outputs / f"{case.name}.audio", timeout)
    except Exception as exc:  # the server's typed error (422, 499, …) or a transport failure
        log.warning("%s: request failed: %s", case.name, exc)
        return FailedCase(case.name, f"{type(exc).__name__}: {exc}")
    return Case(case.name, output, source, audio)
