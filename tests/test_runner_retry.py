"""Runner failures are retried (hosted: up to 10 times; X-Fal-No-Retry opts out), and a request is never run
by two attempts at once nor completed twice.

Real workers are SIGKILLed (a crash) or SIGSTOPped (a worker that is alive but lost: its heartbeat lapses,
the request goes to another worker, and then the first one wakes up).
"""

from __future__ import annotations

import signal

import httpx

from tests.conftest import ALICE
from lipsync.testing.media import data_uri_body
from lipsync.testing.stack import Stack, make_stack, wait_until

AUTH = {"Authorization": f"Key {ALICE}"}


def _submit(stack: Stack, body: dict, headers: dict | None = None) -> dict:
    response = httpx.post(f"{stack.base_url}/pipio/lipsync", json=body, headers=AUTH | (headers or {}))
    assert response.status_code == 200, response.text
    return response.json()


def _status(sub: dict) -> dict:
    return httpx.get(sub["status_url"], params={"logs": 1}, headers=AUTH).json()


def _completed_events(stack: Stack, rid: str) -> int:
    events = stack.redis.xrange(f"lipsync:events:{rid}")
    return sum(1 for _, e in events if e.get(b"kind") == b"status" and e.get(b"status") == b"COMPLETED")


def _slow_body(media, seconds_per_frame: float = 0.3, frames: int = 12) -> dict:
    return data_uri_body(media["video"], media["audio"], use_custom_prompt=True,
                         custom_prompt=f"test:slow={seconds_per_frame}", num_frames=frames)


def _stack(tmp_path, name: str, **settings: str) -> Stack:
    stack = make_stack(tmp_path / name, **settings)
    stack.env["TMPDIR"] = str(tmp_path / name / "tmp")  # the workers' work folders, to watch them
    (tmp_path / name / "tmp").mkdir(parents=True)
    stack.start_api()
    return stack


def test_killed_worker_request_is_retried_and_completes_once(tmp_path, media):
    stack = _stack(tmp_path, "retry")
    try:
        victim = stack.start_worker("retry-w1")
        sub = _submit(stack, _slow_body(media))
        wait_until(lambda: _status(sub)["status"] == "IN_PROGRESS", 30, "the job to start")
        workdirs = list((tmp_path / "retry" / "tmp").glob("lipsync-w*"))
        assert workdirs, "the worker's work folder"
        victim.kill(signal.SIGKILL)
        wait_until(lambda: httpx.get(f"{stack.base_url}/readyz").json()["workers"] == 0, 10, "readyz to drop it")
        wait_until(lambda: _status(sub)["status"] == "IN_QUEUE", 15, "the request to be queued again")
        stack.start_worker("retry-w2")
        final = wait_until(lambda: (s := _status(sub))["status"] == "COMPLETED" and s, 60, "completion")
        assert "error" not in final, final
        messages = [e["message"] for e in final["logs"]]
        assert any("retrying, attempt 1 of 10" in m for m in messages), messages
        assert any("took over the request (retry 1)" in m for m in messages), messages
        assert httpx.get(sub["response_url"], headers=AUTH).json()["video"]["url"]
        assert _completed_events(stack, sub["request_id"]) == 1
        assert not any(d.exists() for d in workdirs), "the killed worker's work folder is left behind"
    finally:
        stack.stop()


def test_no_retry_header_and_exhausted_retries_fail_runner_disconnected(tmp_path, media):
    stack = _stack(tmp_path, "noretry", max_runner_retries="1")
    try:
        opted_out = _submit(stack, _slow_body(media), headers={"X-Fal-No-Retry": "1"})
        victim = stack.start_worker("noretry-w1")
        wait_until(lambda: _status(opted_out)["status"] == "IN_PROGRESS", 30, "the job to start")
        victim.kill(signal.SIGKILL)
        final = wait_until(lambda: (s := _status(opted_out))["status"] == "COMPLETED" and s, 30, "reaping")
        assert final["error_type"] == "runner_disconnected"

        twice = _submit(stack, _slow_body(media))
        for name in ("noretry-w2", "noretry-w3"):
            worker = stack.start_worker(name)
            wait_until(lambda: _status(twice)["status"] == "IN_PROGRESS", 30, "the job to start")
            worker.kill(signal.SIGKILL)
            wait_until(lambda: _status(twice)["status"] != "IN_PROGRESS", 30, "reaping")
        final = wait_until(lambda: (s := _status(twice))["status"] == "COMPLETED" and s, 30, "reaping")
        assert final["error_type"] == "runner_disconnected"  # one retry allowed, two crashes
    finally:
        stack.stop()


def test_a_stalled_worker_never_runs_alongside_its_successor(tmp_path, media):
    stack = _stack(tmp_path, "stall")
    try:
        stalled = stack.start_worker("stall-w1")
        sub = _submit(stack, _slow_body(media, 0.2, 12))
        wait_until(lambda: _status(sub)["status"] == "IN_PROGRESS", 30, "the job to start")
        stalled.popen.send_signal(signal.SIGSTOP)  # alive, but silent: its heartbeat lapses
        wait_until(lambda: _status(sub)["status"] == "IN_QUEUE", 15, "the request to be queued again")
        successor = stack.start_worker("stall-w2")
        wait_until(lambda: _status(sub)["status"] == "IN_PROGRESS", 30, "the successor to start it")
        stalled.popen.send_signal(signal.SIGCONT)  # wakes up mid-job: it must drop its attempt
        final = wait_until(lambda: (s := _status(sub))["status"] == "COMPLETED" and s, 60, "completion")
        assert "error" not in final
        record = stack.redis.hgetall(f"lipsync:req:{sub['request_id']}")
        assert record[b"worker"] == b"stall-w2"
        assert _completed_events(stack, sub["request_id"]) == 1
        wait_until(lambda: "dropping this attempt" in stalled.log() or "result dropped" in stalled.log(), 20,
                   "the stalled worker to drop its attempt")
        assert successor.alive() and stalled.alive()
    finally:
        stack.stop()


def test_a_job_taken_off_the_queue_by_a_worker_that_then_died_is_queued_again(tmp_path, media):
    # A worker pops the job and dies (or loses Redis) before it claims the request: the record says IN_QUEUE
    # and no RQ queue holds it. LPOP is exactly that pop; the housekeeper must put it back.
    stack = _stack(tmp_path, "lost")
    try:
        sub = _submit(stack, data_uri_body(media["video"], media["audio"], num_frames=2))
        assert stack.redis.lpop("rq:queue:lipsync").decode() == sub["request_id"]
        stack.start_worker("lost-w1")
        final = wait_until(lambda: (s := _status(sub))["status"] == "COMPLETED" and s, 30, "completion")
        assert "error" not in final, final
        assert any("job was lost" in e["message"] for e in final["logs"])
        assert _completed_events(stack, sub["request_id"]) == 1
    finally:
        stack.stop()
