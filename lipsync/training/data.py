"""The training sample stream: deterministic per (seed, rank), endless over epochs, and resumable by count.

Each epoch shuffles the shard order with ``(seed, epoch)`` and the records inside a shard with
``(seed, epoch, shard)``. With at least as many shards as processes, process r reads shards r, r + W, ...;
with fewer, every process reads every shard and keeps records r, r + W, ... So what a process sees depends only
on the seed, its rank and how many samples it has consumed: a resumed run skips exactly that many records
(read, not decoded) and continues where the interrupted run was.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np

from lipsync.training.shards import ClipSample, from_wds, read_shard


class ClipStream:
    def __init__(self, shards: list[str], *, rank: int = 0, world: int = 1, seed: int = 0):
        if not shards:
            raise ValueError("no training shards: run `lipsync data prepare` first (or check the data folder)")
        self.shards, self.rank, self.world, self.seed = list(shards), rank, world, seed
        self.consumed = 0
        self._records = self._iterate()

    def _iterate(self) -> Iterator[dict]:
        epoch = 0
        while True:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
            split_shards = len(self.shards) >= self.world
            mine = order[self.rank :: self.world] if split_shards else order
            k = 0
            produced = False
            for s in mine:
                records = read_shard(self.shards[s])
                shard_id = zlib.crc32(self.shards[s].encode())
                for i in np.random.default_rng([self.seed, epoch, shard_id]).permutation(len(records)):
                    if split_shards or k % self.world == self.rank:
                        produced = True
                        yield records[i]
                    k += 1
            if not produced:
                raise ValueError(f"rank {self.rank} of {self.world} gets no training sample from {len(self.shards)} "
                                 f"shards: too few clips for this many processes")
            epoch += 1

    def skip(self, count: int) -> None:
        """Advance past ``count`` samples without decoding them (resume)."""
        for _ in range(count):
            next(self._records)
            self.consumed += 1

    def __iter__(self) -> "ClipStream":
        return self

    def __next__(self) -> ClipSample:
        self.consumed += 1
        return from_wds(next(self._records))


def first_samples(shards: list[str], count: int) -> list[ClipSample]:
    """The first ``count`` clips of ``shards`` in order (validation)."""
    out: list[ClipSample] = []
    for shard in shards:
        for record in read_shard(shard):
            if len(out) == count:
                return out
            out.append(from_wds(record))
    return out
