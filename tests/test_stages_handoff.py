"""``Stages.run(handoff=True)`` (``lipsync.worker.stages``): the worker's engine stage hands its batches over one at a
time — made while the consumer works on the last, never more than two alive — and stops cleanly."""

from __future__ import annotations

import threading
import time

import pytest

from lipsync.worker.stages import Stages, StagesStopped


def _peak_alive(handoff: bool) -> tuple[list[int], int]:
    alive: set[int] = set()
    peak = [0]
    lock = threading.Lock()

    def made():
        for i in range(6):
            with lock:
                alive.add(i)
                peak[0] = max(peak[0], len(alive))
            time.sleep(0.01)  # making an item
            yield i

    out = []
    with Stages() as stages:
        for item in stages.run(made(), name="engine", queue_size=1, handoff=handoff):
            time.sleep(0.1)  # the consumer is the slower side (by far: the test does not time anything)
            with lock:
                alive.discard(item)
            out.append(item)
    return out, peak[0]


def test_handoff_keeps_two_items_alive_and_still_overlaps():
    out, peak = _peak_alive(handoff=True)
    assert out == list(range(6))
    assert peak == 2  # two at once: the next was made while the consumer held the last (and never a third)
    assert _peak_alive(handoff=False)[1] == 3  # a queue of one without the handoff: one more


def test_handoff_producer_stops_with_the_pipeline():
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    stages = Stages()
    items = stages.run(endless(), name="engine", queue_size=1, handoff=True)
    assert next(items) == 0
    stages.__exit__(None, None, None)  # the producer waits on the handoff: it must see the stop
    assert not any(t.is_alive() for t in stages._threads)
    with pytest.raises(StagesStopped):
        list(items)
