"""Status streams outlive long silences: keep-alive comments at most every 15 s, queue position updates while
queued, and the final event after 40 s of waiting with no worker (the Redis client's 5 s socket timeout
used to end the stream). The official JS client's ``subscribe({mode: "streaming"})`` rides the same wait.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.conftest import ALICE
from lipsync.testing.media import data_uri_body
from lipsync.testing.stack import make_stack
from tests.test_js_client import requires_js, run_js

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Key {ALICE}"}
IDLE_S = 40


def _read_stream(url: str, lines: list[tuple[float, str]]) -> None:
    with httpx.stream("GET", url, params={"logs": 1}, headers=AUTH, timeout=httpx.Timeout(5, read=30)) as response:
        for line in response.iter_lines():
            if line:
                lines.append((time.monotonic(), line))


@requires_js
def test_stream_lives_through_a_long_queue_wait_with_keepalives_and_positions(tmp_path, media):
    stack = make_stack(tmp_path / "sse")
    try:
        stack.start_api()
        body = data_uri_body(media["video"], media["audio"], num_frames=2)
        ahead = httpx.post(f"{stack.base_url}/pipio/lipsync", json=body, headers=AUTH).json()
        watched = httpx.post(f"{stack.base_url}/pipio/lipsync", json=body, headers=AUTH).json()
        lines: list[tuple[float, str]] = []
        started = time.monotonic()
        reader = threading.Thread(target=_read_stream, args=(watched["status_url"] + "/stream", lines))
        reader.start()
        js: dict = {}
        client = threading.Thread(target=lambda: js.update(run_js(stack, media, "streaming")))
        client.start()
        time.sleep(5)
        httpx.put(ahead["cancel_url"], headers=AUTH)  # the watched request moves up: an event says so
        time.sleep(IDLE_S - 5)
        stack.start_worker("sse-w1")
        reader.join(60)
        client.join(90)
        assert not reader.is_alive() and not client.is_alive()

        events = [(t, json.loads(line.removeprefix("data: "))) for t, line in lines if line.startswith("data: ")]
        keepalives = [t for t, line in lines if line.startswith(":")]
        assert events[-1][1]["status"] == "COMPLETED" and events[-1][0] - started > IDLE_S
        positions = [e["queue_position"] for _, e in events if e["status"] == "IN_QUEUE"]
        assert positions[:2] == [1, 0], positions
        assert len(keepalives) >= 2
        times = [started] + [t for t, _ in lines]
        assert max(b - a for a, b in zip(times, times[1:])) <= 16.5  # never silent past the keep-alive period
        # The JS client queued behind both for over 20 s and its streaming subscribe still completed.
        assert "COMPLETED" in js["statuses"] and js["data"]["video"]["url"]
    finally:
        stack.stop()
