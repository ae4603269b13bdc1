"""Interleaving one slot's pieces: the rule as ten lines (`interleave_reference`) and its event-driven form.

See docs/cursor.md (rule 3).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

CHUNK = 1 << 16  # entries per generated chunk: a worker's memory does not grow with the epoch


@dataclass(frozen=True)
class Piece:
    """Samples ``start .. end-1`` of shard ``shard``, read sequentially by one slot."""

    shard: int
    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start


def interleave_reference(pieces: Sequence[Piece], k: int) -> list[tuple[int, int]]:
    """The interleave rule, one sample at a time: the executable definition (slow; for tests)."""
    cur = [p.start for p in pieces]
    open_, nxt, i, out = list(range(min(k, len(pieces)))), min(k, len(pieces)), 0, []
    while open_:
        pid = open_[i]
        out.append((pieces[pid].shard, cur[pid]))
        cur[pid] += 1
        if cur[pid] < pieces[pid].end:
            i = (i + 1) % len(open_)
        elif nxt < len(pieces):
            open_[i], nxt, i = nxt, nxt + 1, (i + 1) % len(open_)
        else:
            del open_[i]
            i = i % len(open_) if open_ else 0
    return out


class _Interleaver:
    """Event-driven form of `interleave_reference`: O(k) work per piece exhausted, not per sample.

    Between two exhaustions the open set is fixed and emission t of the phase comes from open
    position ``(i + t) % m``, as the ``t // m``-th sample taken from it in the phase.
    """

    def __init__(self, pieces: Sequence[Piece], k: int) -> None:
        self.pieces = list(pieces)
        self.cur = [p.start for p in self.pieces]
        n_open = min(k, len(self.pieces))
        self.open = list(range(n_open))
        self.next = n_open
        self.i = 0

    def done(self) -> bool:
        return not self.open

    def phase(self) -> tuple[int, int]:
        """Length of the current phase (emissions up to and including the next exhaustion), and the
        open position that runs out at its end."""
        m = len(self.open)
        best, best_j = -1, -1
        for j, pid in enumerate(self.open):
            left = self.pieces[pid].end - self.cur[pid]
            e = (j - self.i) % m + (left - 1) * m + 1
            if best < 0 or e < best:
                best, best_j = e, j
        return best, best_j

    def arrays(self, t0: int, t1: int) -> tuple[np.ndarray, np.ndarray]:
        """Shards and positions of emissions ``t0 .. t1-1`` of the current phase (no state change)."""
        m = len(self.open)
        shards = np.array([self.pieces[pid].shard for pid in self.open], dtype=np.int64)
        starts = np.array([self.cur[pid] for pid in self.open], dtype=np.int64)
        t = np.arange(t0, t1, dtype=np.int64)
        j = (self.i + t) % m
        return shards[j], starts[j] + t // m

    def advance(self, t: int) -> None:
        """Consume the first ``t`` emissions of the current phase (``t <= phase length``)."""
        s, jstar = self.phase()
        if t <= 0:
            return
        if t > s:
            raise AssertionError("advance past the end of a phase")
        m = len(self.open)
        q, rem = divmod(t, m)
        for j, pid in enumerate(self.open):
            self.cur[pid] += q + (1 if (j - self.i) % m < rem else 0)
        if t < s:
            self.i = (self.i + t) % m
            return
        if self.next < len(self.pieces):
            self.open[jstar] = self.next
            self.next += 1
            self.i = (jstar + 1) % m
        else:
            del self.open[jstar]
            self.i = jstar % len(self.open) if self.open else 0

    def skip(self, c: int) -> None:
        """Consume the first ``c`` emissions (fewer if the sequence is shorter)."""
        while c > 0 and self.open:
            s, _ = self.phase()
            step = min(s, c)
            self.advance(step)
            c -= step

    def chunks(self, limit: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Arrays of the next ``limit`` emissions (or all remaining), in chunks of at most CHUNK."""
        while limit > 0 and self.open:
            s, _ = self.phase()
            step = min(s, limit, CHUNK)
            yield self.arrays(0, step)
            self.advance(step)
            limit -= step

    def emitted(self) -> list[int]:
        """Samples taken so far from each piece."""
        return [c - p.start for c, p in zip(self.cur, self.pieces)]
