"""The video-side cache's store (``lipsync.worker.video_cache.VideoCache``) on a real folder: verified reads,
least-recently-used eviction under the byte budget, and several processes filling one entry at once.

The pipeline's use of it (every engine, byte-identical frames, no tracking or image-encoder call on a reused
video, damaged entries recomputed) is in tests/engines/test_video_cache_engines.py; through the real stack in
tests/test_video_cache_stack.py.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest

from lipsync.worker.video_cache import STALE_TMP_S, VideoCache, key_of, video_side_fields


def arrays(seed: int, nbytes: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"crops": rng.integers(0, 255, nbytes, dtype=np.uint8).reshape(-1, 8), "present": np.ones(3, bool)}


def test_an_entry_reads_back_whole(tmp_path):
    cache = VideoCache(tmp_path, 1 << 20)
    data = arrays(0, 4096)
    writer = cache.writer("crops", "k")
    for part in np.split(data["crops"], 4):  # streamed in chunks, one array
        writer.append("crops", part)
    writer.append("present", data["present"])
    writer.meta = {"seconds": 1.5}
    assert writer.commit() == (tmp_path / "crops-k.lsc").stat().st_size
    entry = cache.get("crops", "k")
    assert entry.meta == {"seconds": 1.5}
    assert np.array_equal(entry.arrays["crops"], data["crops"]) and entry.arrays["present"].tolist() == [True] * 3
    assert cache.get("crops", "other") is None and not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage", "another_key"])
def test_a_damaged_entry_is_dropped_and_said_once(tmp_path, damage):
    cache = VideoCache(tmp_path, 1 << 20)
    cache.put("crops", "k", {}, arrays(0, 4096))
    path = tmp_path / "crops-k.lsc"
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[100] ^= 1
    elif damage == "truncate":
        data = data[:-1]
    elif damage == "empty":
        data = bytearray()
    elif damage == "garbage":
        data = bytearray(os.urandom(len(data)))
    else:  # a whole, valid entry of another key under this name
        cache.put("crops", "other", {}, arrays(1, 4096))
        data = bytearray((tmp_path / "crops-other.lsc").read_bytes())
    path.write_bytes(bytes(data))
    said: list[str] = []
    assert cache.get("crops", "k", said.append) is None
    assert len(said) == 1 and "corrupt" in said[0] and not path.exists() and cache.dropped == 1
    assert cache.get("crops", "k", said.append) is None and len(said) == 1  # gone: a plain miss, nothing said


def test_the_byte_budget_holds_least_recently_used_go_first(tmp_path):
    one = 3000
    entry_bytes = VideoCache(tmp_path / "probe", 1 << 30).put("crops", "a", {}, arrays(0, one))
    budget = 3 * entry_bytes + entry_bytes // 2  # room for three entries
    cache = VideoCache(tmp_path / "cache", budget)
    for name in "abc":
        cache.put("crops", name, {}, arrays(ord(name), one))
        time.sleep(0.02)  # file times are coarse (a few ms)
    assert cache.get("crops", "a") is not None  # a is now the most recently used
    time.sleep(0.02)
    cache.put("crops", "d", {}, arrays(4, one))
    names = sorted(p.name for p in (tmp_path / "cache").glob("*.lsc"))
    assert names == ["crops-a.lsc", "crops-c.lsc", "crops-d.lsc"], names  # b, the least recently used, went
    assert cache.total_bytes() <= budget
    for name in "efgh":  # past the budget again and again: it always holds
        time.sleep(0.02)
        cache.put("crops", name, {}, arrays(ord(name), one))
        assert cache.total_bytes() <= budget
    assert sorted(p.name[6] for p in (tmp_path / "cache").glob("*.lsc")) == ["f", "g", "h"]
    assert cache.put("crops", "huge", {}, arrays(9, 4 * one)) is None  # alone over the budget: not kept
    assert not (tmp_path / "cache" / "crops-huge.lsc").exists() and not list((tmp_path / "cache").glob(".tmp-*"))


def test_stale_temporary_files_of_dead_writers_go(tmp_path):
    cache = VideoCache(tmp_path, 1 << 20)
    stale, fresh = tmp_path / ".tmp-crops-x-1-dead", tmp_path / ".tmp-crops-y-2-live"
    stale.write_bytes(b"x" * 100)
    fresh.write_bytes(b"y")
    old = time.time() - STALE_TMP_S - 10
    os.utime(stale, (old, old))
    cache.put("crops", "k", {}, arrays(0, 800))
    assert not stale.exists() and fresh.exists()


def _fill(folder: str, start, rounds: int, seed: int) -> None:
    cache = VideoCache(Path(folder), 1 << 30)
    start.wait()
    for _ in range(rounds):
        cache.put("encoder", "shared", {"seed": 0}, arrays(0, 8 << 20))  # the same content, as two workers make
        cache.put("crops", f"own-{seed}", {}, arrays(seed, 1 << 20))


def test_two_workers_filling_one_entry_at_once_leave_one_whole_entry(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    workers = [ctx.Process(target=_fill, args=(str(tmp_path), start, 4, seed)) for seed in (1, 2)]
    for w in workers:
        w.start()
    cache = VideoCache(tmp_path, 1 << 30)
    expected = arrays(0, 8 << 20)["crops"]
    start.set()
    reads = 0
    while any(w.is_alive() for w in workers):  # a reader meanwhile never sees half an entry
        entry = cache.get("encoder", "shared")
        if entry is not None:
            assert np.array_equal(entry.arrays["crops"], expected)
            reads += 1
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    assert cache.dropped == 0 and reads > 0
    assert sorted(p.name for p in tmp_path.glob("*.lsc")) == ["crops-own-1.lsc", "crops-own-2.lsc",
                                                               "encoder-shared.lsc"]
    assert not list(tmp_path.glob(".tmp-*"))
    assert np.array_equal(cache.get("encoder", "shared").arrays["crops"], expected)


def test_the_key_holds_every_video_side_field_and_no_audio_or_model_knob():
    from lipsync.contract.schema import STORAGE_SCHEME, LipsyncInput, validate_input

    context = {"internal": True, "max_num_frames": 10_000, "max_prompt_chars": 2_000}

    def fields(**extra):
        return video_side_fields(validate_input(LipsyncInput, {"video": STORAGE_SCHEME + "v", "audio": STORAGE_SCHEME
                                                               + "a", **extra}, context))

    base = fields()
    assert {"frame_rate", "height", "width", "num_frames", "speaker", "sync_mode", "edit_removal_ranges"} <= set(base)
    assert not {"video", "audio", "seed", "custom_prompt", "skip_video_cache", "vae_chunk_size"} & set(base)
    assert fields(audio=STORAGE_SCHEME + "other", seed=7, skip_video_cache=True) == base
    for change in ({"speaker": "auto"}, {"sync_mode": "loop"}, {"frame_rate": 12}, {"num_frames": 5}):
        assert key_of(fields(**change)) != key_of(base), change
