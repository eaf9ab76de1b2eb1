"""A whole timeline of fixed-size arrays kept on disk, not in memory: for engines that must see every frame
before they can give the first one back (pipio: its VAE chunks and transformer blocks span the timeline).

Chunks are appended as the worker crops them and read back by range or by index list with plain ``pread``
calls on an unlinked temporary file (in the request's work folder when given): the data sits in the page cache
or on disk, never in the process's heap nor in its resident set (a memory map's touched pages would count), so
host memory stays flat however long the video is; a crashed worker leaves no file behind. At 512² a face crop
is 768 KiB: ten minutes of 25 fps video are 11 GB on disk instead of in RAM.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


class FrameStore:
    """``(T, *item_shape)`` array-like of ``dtype``: ``append`` chunks, then ``store[i]``, ``store[a:b]`` or
    ``store[index_array]`` give ndarrays. ``close`` (or the context manager) drops the file."""

    def __init__(self, item_shape: tuple[int, ...], dtype: np.dtype | type = np.uint8, *,
                 directory: str | os.PathLike[str] | None = None):
        self.item_shape = tuple(int(v) for v in item_shape)
        self.dtype = np.dtype(dtype)
        self._item_bytes = int(np.prod(self.item_shape, dtype=np.int64)) * self.dtype.itemsize
        folder = Path(directory) if directory is not None else None
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        self._file = tempfile.TemporaryFile(dir=folder, prefix="frames-")  # unlinked at once
        self._fd = self._file.fileno()
        self._len = 0

    # array-like surface (what the model pipeline reads)
    @property
    def shape(self) -> tuple[int, ...]:
        return (self._len, *self.item_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.item_shape)

    @property
    def nbytes(self) -> int:
        return self._len * self._item_bytes

    def __len__(self) -> int:
        return self._len

    def append(self, chunk: np.ndarray) -> None:
        chunk = np.ascontiguousarray(chunk, dtype=self.dtype)
        if chunk.shape[1:] != self.item_shape:
            raise ValueError(f"chunk items are {chunk.shape[1:]}, the store holds {self.item_shape}")
        data = memoryview(chunk.reshape(-1).view(np.uint8))
        offset = self._len * self._item_bytes
        while data:
            written = os.pwrite(self._fd, data, offset)
            data, offset = data[written:], offset + written
        self._len += len(chunk)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self._len if key < 0 else 0)
            if not 0 <= i < self._len:
                raise IndexError(f"index {int(key)} out of range for {self._len} frames")
            return self._read(i, i + 1)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(self._len)
            if step != 1:
                return self[np.arange(start, stop, step)]
            return self._read(start, max(start, stop))
        index = np.asarray(key)
        if index.dtype == np.bool_:
            index = np.flatnonzero(index)
        if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
            raise TypeError(f"a FrameStore is indexed by an int, a slice or a 1-D index array, not {key!r}")
        index = np.where(index < 0, index + self._len, index)
        if index.size and (index.min() < 0 or index.max() >= self._len):
            raise IndexError(f"index out of range for {self._len} frames")
        wanted, inverse = np.unique(index, return_inverse=True)
        out = np.empty((len(wanted), *self.item_shape), self.dtype)
        # one read per run of consecutive frames (a frame range, padded by repeating its last frame, is one run)
        breaks = np.flatnonzero(np.diff(wanted) != 1) + 1
        for run_start, run_end in zip(np.r_[0, breaks], np.r_[breaks, len(wanted)]):
            first = int(wanted[run_start])
            out[run_start:run_end] = self._read(first, first + int(run_end - run_start))
        return out if np.array_equal(inverse, np.arange(len(wanted))) else out[inverse]

    def _read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self.item_shape), self.dtype)
        if out.size == 0:
            return out
        view = memoryview(out.reshape(-1).view(np.uint8))
        offset = start * self._item_bytes
        while view:
            got = os.preadv(self._fd, [view], offset)
            if got <= 0:
                raise OSError(f"short read from the frame store at byte {offset}")
            view, offset = view[got:], offset + got
        return out

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "FrameStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
