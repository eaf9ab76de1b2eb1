"""Hardening against hostile inputs, slow peers and faults (issue 27): each case with real processes.

A request that kills its worker (a poison request) ends typed after two deaths instead of taking the fleet
down; strings must be valid Unicode at submit.
"""

from __future__ import annotations

import httpx

from tests.conftest import ALICE
from lipsync.testing.media import data_uri_body
from lipsync.testing.stack import make_stack, wait_until

AUTH = {"Authorization": f"Key {ALICE}"}


def _status(sub: dict) -> dict:
    return httpx.get(sub["status_url"], params={"logs": 1}, headers=AUTH).json()


def test_a_request_that_kills_its_worker_twice_ends_poison_request(tmp_path, media):
    stack = make_stack(tmp_path / "poison")
    try:
        stack.start_api()
        workers = [stack.start_worker(f"poison-w{i}") for i in range(3)]
        body = data_uri_body(media["video"], media["audio"], use_custom_prompt=True, custom_prompt="test:die",
                             num_frames=2)
        sub = httpx.post(f"{stack.base_url}/pipio/lipsync", json=body, headers=AUTH).json()
        final = wait_until(lambda: (s := _status(sub))["status"] == "COMPLETED" and s, 60, "the request to end")
        assert final["error_type"] == "poison_request", final
        assert sum(not w.alive() for w in workers) == 2  # the third worker never took it
        result = httpx.get(sub["response_url"], headers=AUTH)
        assert result.json()["error_type"] == "poison_request"
        ok = httpx.post(f"{stack.base_url}/pipio/lipsync", headers=AUTH,
                        json=data_uri_body(media["video"], media["audio"], num_frames=2)).json()
        done = wait_until(lambda: (s := _status(ok))["status"] == "COMPLETED" and s, 60, "the next request")
        assert "error" not in done, done
    finally:
        stack.stop()
