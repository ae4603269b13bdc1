"""Topology (ranks x workers, batch size, interleave width, even-ranks policy) and the epoch's shard order.

See docs/cursor.md (vocabulary and rule 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.random  # noqa: F401 - imported here, not lazily inside the first epoch_shard_order (7 ms)

from ..errors import StateError, WdspqError

EVEN_MODES = ("pad", "drop", "none")


@dataclass(frozen=True)
class Topology:
    """Ranks x DataLoader workers, batch size, interleave width and the even-ranks policy.

    ``num_workers`` is the DataLoader argument (0 means the main process reads: one logical worker).
    """

    world_size: int = 1
    num_workers: int = 0
    batch_size: int = 1
    interleave: int = 4
    even: str = "pad"

    def __post_init__(self) -> None:
        for name in ("world_size", "batch_size", "interleave"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise WdspqError(f"topology: {name} must be an integer >= 1, got {value!r}")
        nw = self.num_workers
        if not isinstance(nw, (int, np.integer)) or isinstance(nw, bool) or nw < 0:
            raise WdspqError(f"topology: num_workers must be an integer >= 0, got {nw!r}")
        if self.even not in EVEN_MODES:
            raise WdspqError(f"topology: even must be one of {EVEN_MODES}, got {self.even!r}")

    @property
    def workers(self) -> int:
        """Logical workers per rank: ``max(1, num_workers)``."""
        return max(1, int(self.num_workers))

    @property
    def n_slots(self) -> int:
        """Number of slots, ``world_size * workers``."""
        return int(self.world_size) * self.workers

    def slot(self, rank: int, worker: int) -> int:
        """Slot id of (rank, logical worker)."""
        if not (0 <= rank < self.world_size and 0 <= worker < self.workers):
            raise WdspqError(f"rank {rank} / worker {worker} outside topology {self.describe()}")
        return rank * self.workers + worker

    def key(self) -> tuple[int, int, int, int, str]:
        """What decides the plan: two topologies with equal keys give identical plans."""
        return (int(self.world_size), self.workers, int(self.batch_size), int(self.interleave), self.even)

    def describe(self) -> str:
        """Short human-readable form for error messages."""
        return (
            f"world_size={self.world_size}, num_workers={self.num_workers}, batch_size={self.batch_size}, "
            f"interleave={self.interleave}, even={self.even}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return {
            "world_size": int(self.world_size),
            "num_workers": int(self.num_workers),
            "batch_size": int(self.batch_size),
            "interleave": int(self.interleave),
            "even": self.even,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Topology:
        """Inverse of `to_dict`; raises StateError on a malformed dict."""
        try:
            return cls(
                world_size=d["world_size"],
                num_workers=d["num_workers"],
                batch_size=d["batch_size"],
                interleave=d["interleave"],
                even=d["even"],
            )
        except (KeyError, TypeError, WdspqError) as e:
            raise StateError(
                f"state topology is malformed ({e}): {dict(d) if isinstance(d, Mapping) else d!r}"
            ) from e


def epoch_shard_order(n_shards: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Shard order of one epoch (int64 array of shard ids).

    shuffle: ``np.random.default_rng([seed, epoch]).permutation(n_shards)``; else ``arange``.
    """
    if shuffle:
        if seed < 0 or epoch < 0:
            raise WdspqError(f"seed and epoch must be >= 0 to shuffle, got seed={seed}, epoch={epoch}")
        return np.random.default_rng([int(seed), int(epoch)]).permutation(int(n_shards)).astype(np.int64)
    return np.arange(int(n_shards), dtype=np.int64)
