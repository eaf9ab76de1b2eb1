"""lipsync.media.frame_store: a timeline of crops on disk, read back by range and index, never in the resident set."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from lipsync.media.frame_store import FrameStore


def test_reads_give_back_what_was_appended(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (23, 8, 6, 3), dtype=np.uint8)
    with FrameStore((8, 6, 3), np.uint8, directory=tmp_path) as store:
        for start in range(0, 23, 5):
            store.append(data[start : start + 5])
        assert store.shape == data.shape and len(store) == 23 and store.ndim == 4 and store.dtype == np.uint8
        assert np.array_equal(store[3], data[3]) and np.array_equal(store[-1], data[-1])
        assert np.array_equal(store[4:17], data[4:17]) and np.array_equal(store[::4], data[::4])
        assert store[30:40].shape == (0, 8, 6, 3)
        index = np.array([5, 6, 7, 7, 7, 2, 22, 0])  # runs, repeats (padding) and jumps
        assert np.array_equal(store[index], data[index])
        assert np.array_equal(store[np.arange(23) % 2 == 0], data[::2])
        assert os.listdir(tmp_path) == []  # unlinked from the start: a crash leaves nothing
        with pytest.raises(IndexError):
            store[23]
        with pytest.raises(IndexError):
            store[np.array([0, 23])]
        with pytest.raises(ValueError, match="holds"):
            store.append(np.zeros((1, 8, 6, 4), np.uint8))
    floats = np.linspace(0, 1, 3 * 4 * 4, dtype=np.float32).reshape(3, 4, 4)
    with FrameStore((4, 4), np.float32) as store:
        store.append(floats)
        assert np.array_equal(store[np.array([2, 0])], floats[[2, 0]])


def test_a_gigabyte_on_disk_stays_out_of_the_resident_set(tmp_path):
    """256 MiB appended and read back in 8 MiB chunks: the process's peak RSS grows by a few chunks only."""
    code = f"""
import resource, numpy as np
from lipsync.media.frame_store import FrameStore
chunk = np.full((16, 512, 512, 3), 7, np.uint8)  # 12 MiB: 16 face crops at 512^2
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with FrameStore((512, 512, 3), directory={str(tmp_path)!r}) as store:
    for _ in range(22):
        store.append(chunk)
    total = 0
    for start in range(0, len(store), 16):
        total += int(store[start:start + 16][:, 0, 0, 0].sum())
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(store.nbytes / 2**20, grown, total)
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()}).stdout.split()
    stored_mb, grown_mb, total = float(out[0]), float(out[1]), int(out[2])
    assert stored_mb == 22 * 12 and total == 22 * 16 * 7
    assert grown_mb < 60, f"peak RSS grew by {grown_mb:.0f} MB for {stored_mb:.0f} MB stored"
