"""The official JS client (@fal-ai/client, pinned in tests/js/package.json) against the real stack.

Each scenario runs tests/js/client_e2e.mjs under node and returns what the client observed as JSON.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import ALICE
from lipsync.testing.media import probe

JS_DIR = Path(__file__).parent / "js"

requires_js = pytest.mark.skipif(
    shutil.which("node") is None or not (JS_DIR / "node_modules" / "@fal-ai" / "client").exists(),
    reason="node or the pinned @fal-ai/client is missing: run README's set-up command",
)
pytestmark = requires_js


def run_js(stack, media, scenario: str, *, request: dict | None = None, timeout: float = 120) -> dict:
    """One scenario of client_e2e.mjs against ``stack`` with ``media["video"]``/``media["audio"]``; ``request``
    adds input fields (the ``request`` scenario). Returns the script's last JSON line."""
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "BASE": stack.base_url, "FAL_KEY": ALICE,
           "VIDEO": str(media["video"]), "AUDIO": str(media["audio"])}
    if request is not None:
        env["REQUEST"] = json.dumps(request)
    out = subprocess.run(["node", "client_e2e.mjs", scenario], cwd=JS_DIR, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, f"{out.stderr}\n{stack.logs()}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def _check_video(result: dict, tmp_path: Path, frames: int) -> None:
    path = tmp_path / "out.mp4"
    path.write_bytes(httpx.get(result["data"]["video"]["url"]).content)
    assert probe(path)["frames"] == frames


@pytest.mark.parametrize("scenario", ["subscribe", "streaming", "proxy"])
def test_subscribe_with_uploads_and_logs(stack, media, tmp_path, scenario):
    result = run_js(stack, media, scenario)
    assert len(result["requestId"]) == 36  # read from the X-Fal-Request-Id header
    assert "COMPLETED" in result["statuses"]
    assert any(m.startswith("encoding frame") for m in result["logs"])
    assert result["audioUrl"].startswith(stack.base_url + "/files/") and "/uploads/" in result["audioUrl"]
    _check_video(result, tmp_path, frames=8)
    api_log = stack.api.log()
    if scenario == "streaming":  # the status came over SSE, not polling
        assert f"/requests/{result['requestId']}/status/stream" in api_log
    if scenario == "proxy":  # every call went through the one proxy URL
        assert "POST /api/fal/proxy" in api_log and "GET /api/fal/proxy" in api_log


def test_queue_submit_status_result(stack, media, tmp_path):
    result = run_js(stack, media, "queue")
    submitted = result["submitted"]
    assert submitted["status"] == "IN_QUEUE" and {"response_url", "status_url", "cancel_url"} <= submitted.keys()
    assert result["first"] in {"IN_QUEUE", "IN_PROGRESS", "COMPLETED"}
    assert result["done"]["status"] == "COMPLETED" and result["done"]["logs"]
    assert result["requestId"] == submitted["request_id"]
    _check_video(result, tmp_path, frames=5)


def test_validation_error_names_fields(stack, media):
    result = run_js(stack, media, "validation")
    assert result["raised"] and result["isValidationError"] and result["status"] == 422
    assert result["videoErrors"] and result["seedErrors"]


def test_multipart_upload_over_90mb(stack, media):
    result = run_js(stack, media, "multipart")
    assert result["same"] and result["size"] == 91 * 1024 * 1024
    assert result["url"].startswith(stack.base_url + "/files/") and "/uploads/" in result["url"]
    assert not list((stack.workdir / "storage" / ".parts").iterdir())  # parts cleaned up after assembly
