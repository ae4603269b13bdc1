"""The worker control block: the plan of a `StreamLoader`'s next iteration, handed to its DataLoader workers.

The loader (main process) packs it before each `iter()` into a shared int64 tensor of fixed size; every
worker, persistent ones included, unpacks it when its iteration starts, so a resumed state or a new epoch
reaches workers that were started long before. Its layout, in one place:

    [epoch, base per shard (n), number of consumed ranges, consumed ranges (shard, start, end; padded to
     `capacity`), skip per slot, start worker per rank, ring generation]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ControlBlock:
    """What a worker needs to rebuild its iteration's plan (with the manifest, seed and topology it has)."""

    epoch: int
    base: list[int]  # per shard
    consumed: list[list[int]]  # (shard, start, end) ranges read by an earlier segment of the epoch
    skip: list[int]  # per slot: entries already delivered
    start_worker: list[int]  # per rank: the worker that takes the next batch
    generation: int  # the loader's iteration counter (claims of the shared ring)

    @staticmethod
    def capacity(n_shards: int, n_slots: int) -> int:
        """Consumed ranges the block can carry (a state has at most one per piece of an earlier segment, and
        pieces number at most shards + 2 x slots)."""
        return n_shards + 8 * n_slots + 256

    @classmethod
    def size(cls, n_shards: int, n_slots: int, world_size: int) -> int:
        """Entries of a packed block (fixed for a loader: the shared tensor is allocated once)."""
        return 3 + n_shards + 3 * cls.capacity(n_shards, n_slots) + n_slots + world_size

    def pack(self, n_slots: int) -> list[int]:
        """The block as `size(...)` ints (`n_slots`: of the loader's topology)."""
        n = len(self.base)
        cap = self.capacity(n, n_slots)
        if len(self.consumed) > cap:
            raise ValueError(f"{len(self.consumed)} consumed ranges, more than the control block carries ({cap})")
        flat = [int(x) for rng in self.consumed for x in rng]
        return [int(self.epoch), *map(int, self.base), len(self.consumed), *flat, *[0] * (3 * cap - len(flat)),
                *map(int, self.skip), *map(int, self.start_worker), int(self.generation)]

    @classmethod
    def unpack(cls, values: Sequence[int], n_shards: int, n_slots: int) -> ControlBlock:
        """The block packed by `pack` (a list of ints, e.g. the shared tensor's `tolist()`)."""
        c, n = [int(x) for x in values], n_shards
        n_consumed = c[1 + n]
        at = 2 + n + 3 * cls.capacity(n, n_slots)
        return cls(
            epoch=c[0],
            base=c[1:1 + n],
            consumed=[c[2 + n + 3 * i:5 + n + 3 * i] for i in range(n_consumed)],
            skip=c[at:at + n_slots],
            start_worker=c[at + n_slots:-1],
            generation=c[-1],
        )
