"""Two workers on one Redis share a batch of requests, and each request is done exactly once."""

from __future__ import annotations

from collections import Counter

import httpx

from lipsync.queue.jobs import JobStore
from lipsync.queue.records import RequestStatus
from tests.conftest import ALICE
from lipsync.testing.media import data_uri_body
from lipsync.testing.stack import make_stack, wait_until


def test_two_workers_share_a_batch_exactly_once(tmp_path_factory, media):
    stack = make_stack(tmp_path_factory.mktemp("pair"))
    try:
        stack.start_api()
        stack.start_worker("pair-w1")
        stack.start_worker("pair-w2")
        body = data_uri_body(media["video"], media["audio"], use_custom_prompt=True,
                             custom_prompt="test:slow=0.05", num_frames=6)
        ids = [httpx.post(f"{stack.base_url}/pipio/lipsync", json=body, headers={"Authorization": f"Key {ALICE}"})
               .json()["request_id"] for _ in range(12)]
        store = JobStore(stack.redis)
        wait_until(lambda: all(store.get(i).status is RequestStatus.COMPLETED for i in ids), 90, "the batch")
        records = [store.get(i) for i in ids]
        assert all(r.error is None for r in records)
        by_worker = Counter(r.worker for r in records)
        assert set(by_worker) == {"pair-w1", "pair-w2"}, by_worker  # both took a share
        for rid in ids:  # each ran once and completed once
            events = store.events(rid)
            assert sum(e.kind == "log" and e.data["message"] == "Fetching inputs" for e in events) == 1
            assert sum(e.kind == "status" and e.data["status"] == "COMPLETED" for e in events) == 1
    finally:
        stack.stop()
