"""The plan of one segment: who reads what, in which order (dealing, padding or dropping, batch order).

See docs/cursor.md (rules 2, 4 and 5).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .. import epoch_order
from ..errors import StateError, WdspqError
from .interleave import CHUNK, Piece, _Interleaver
from .state import BATCHES
from .topology import Topology, epoch_shard_order

if TYPE_CHECKING:
    from .state import CursorState


def split_mode(shard_order: str) -> bool | str:
    """How a plan with this order cuts the remaining ranges: ``True`` (``"block"``: `epoch_order.split_ranges`),
    ``"batches"`` (`batch_pieces`) or ``False`` (whole shards)."""
    return BATCHES if shard_order == BATCHES else shard_order == "block"


def batch_pieces(ranges: Sequence[tuple[int, int, int]], world_size: int, workers: int,
                 batch_size: int) -> list[tuple[int, tuple[int, int, int]]]:
    """The remaining ranges, in order, cut into batches of ``batch_size`` positions (the last may be short),
    batch ``i`` dealt to the slot that delivers the ``i``-th batch of the whole job: rank ``i % world_size``
    (ranks step together), worker ``(i // world_size) % workers`` (a rank's loader takes its workers' batches
    in turn). So the batches, taken step by step and rank by rank, are the positions in order, for any
    topology. Returns (slot, piece) in order; a batch may span ranges (several pieces), and consecutive
    pieces of one slot that touch are merged (one slot: the ranges as they are)."""
    W, N, B = int(world_size), int(workers), int(batch_size)
    if W * N == 1:  # one slot: every batch is its own, the ranges as they are (no loop per batch)
        return [(0, (int(s), int(a), int(b))) for s, a, b in ranges if b > a]
    out: list[tuple[int, tuple[int, int, int]]] = []
    i, fill = 0, 0  # batch number, positions already in batch i
    for s, a, b in ranges:
        pos = a
        while pos < b:
            end = min(b, pos + (B - fill))
            slot = (i % W) * N + (i // W) % N
            if out and out[-1][0] == slot and out[-1][1][0] == s and out[-1][1][2] == pos:
                out[-1] = (slot, (s, out[-1][1][1], end))
            else:
                out.append((slot, (s, pos, end)))
            fill += end - pos
            pos = end
            if fill == B:
                i, fill = i + 1, 0
    return out


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _round_robin(counts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Round-robin-skip-exhausted order for per-worker batch counts: (worker ids, batch number of each
    within its worker)."""
    c = np.asarray(counts, dtype=np.int64)
    if c.size == 0 or c.max(initial=0) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    rounds, workers = np.nonzero(np.arange(int(c.max()))[:, None] < c[None, :])
    return workers.astype(np.int64), rounds.astype(np.int64)


class Plan:
    """Who reads what, in which order, for one segment: a pure function of its inputs (R2).

    The segment starts from ``base`` (per-shard consumed prefix) and the ``consumed`` ranges past it,
    shards in ``order``; ``split`` cuts long ranges into pieces (``shard_order="block"``), on the shards'
    ordinal block boundaries where it can when ``blocks`` (samples per block) is given;
    ``split="batches"`` deals batches of positions in delivery order (`batch_pieces`; pieces are then read
    one at a time, whatever ``interleave``). All per-slot sequences, pad counts and batch orders derive from it.
    """

    def __init__(
        self,
        shard_sizes: Sequence[int],
        base: Sequence[int],
        order: Sequence[int],
        topology: Topology,
        consumed: Sequence[Sequence[int]] = (),
        split: bool | str = False,
        blocks: Sequence[int] | None = None,
    ) -> None:
        n = len(shard_sizes)
        if len(base) != n:
            raise StateError(f"base has {len(base)} entries for {n} shards")
        order_arr = np.asarray(order, dtype=np.int64)
        if order_arr.shape != (n,) or not np.array_equal(np.sort(order_arr), np.arange(n)):
            raise StateError(f"shard order is not a permutation of {n} shards")
        for s, (b, size) in enumerate(zip(base, shard_sizes)):
            if int(size) < 0:
                raise StateError(f"shard {s} has a negative sample count {size}")
            if not 0 <= int(b) <= int(size):
                raise StateError(f"base {b} of shard {s} is outside [0, {size}]")
        self.shard_sizes: tuple[int, ...] = tuple(int(x) for x in shard_sizes)
        self.base: tuple[int, ...] = tuple(int(x) for x in base)
        self.order: tuple[int, ...] = tuple(int(x) for x in order_arr)
        self.topology = topology
        self.consumed: tuple[tuple[int, int, int], ...] = tuple(
            tuple(r) for r in epoch_order.check_consumed(consumed, self.shard_sizes, self.base)  # type: ignore[misc]
        )
        self.split: bool | str = BATCHES if split == BATCHES else bool(split)
        # batches dealt in delivery order are read one piece at a time: interleaving would mix two batches
        self._k = 1 if self.split == BATCHES else int(topology.interleave)
        self.blocks: tuple[int, ...] | None = None if blocks is None else tuple(int(g) for g in blocks)
        ranges = epoch_order.remaining_ranges(self.shard_sizes, self.base, self.consumed, self.order)
        if self.split == BATCHES:
            dealt = batch_pieces(ranges, int(topology.world_size), topology.workers, int(topology.batch_size))
            self.pieces: tuple[Piece, ...] = tuple(Piece(*r) for _, r in dealt)
            slots: list[list[Piece]] = [[] for _ in range(topology.n_slots)]
            for slot, piece in zip((x for x, _ in dealt), self.pieces):
                slots[slot].append(piece)
            self._slot_pieces = [tuple(x) for x in slots]
        else:
            if self.split:
                ranges = epoch_order.split_ranges(ranges, topology.n_slots, self.blocks)
            self.pieces = tuple(Piece(*r) for r in ranges)
            self._slot_pieces = self._deal()
        W, N, B = int(topology.world_size), topology.workers, int(topology.batch_size)
        real = [sum(len(p) for p in ps) for ps in self._slot_pieces]
        kept, pad = list(real), [0] * len(real)
        raw = [sum(_ceil_div(real[r * N + w], B) for w in range(N)) for r in range(W)]
        if topology.even == "pad" and raw:
            target = max(raw)
            for r in range(W):
                heap = [(_ceil_div(real[r * N + w], B), w) for w in range(N)]
                heapq.heapify(heap)
                for _ in range(target - raw[r]):
                    nb, w = heapq.heappop(heap)
                    pad[r * N + w] += B
                    heapq.heappush(heap, (nb + 1, w))
        elif topology.even == "drop" and raw:
            target = min(raw)
            for r in range(W):
                counts = [_ceil_div(real[r * N + w], B) for w in range(N)]
                m = np.bincount(_round_robin(counts)[0][:target], minlength=N)
                for w in range(N):
                    kept[r * N + w] = min(real[r * N + w], int(m[w]) * B)
        self._real, self._kept, self._pad = real, kept, pad
        self._order_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def for_state(cls, state: CursorState, shard_sizes: Sequence[int], blocks: Sequence[int] | None = None) -> Plan:
        """Plan of the segment a state belongs to (its base, consumed ranges, epoch order and topology)."""
        order = epoch_shard_order(len(shard_sizes), state.seed, state.epoch, state.shuffle)
        return cls(shard_sizes, state.base, order, state.topology, state.consumed, split_mode(state.shard_order),
                   blocks)

    def _deal(self) -> list[tuple[Piece, ...]]:
        W, N = int(self.topology.world_size), self.topology.workers
        out: list[list[Piece]] = [[] for _ in range(W * N)]
        ranks = [(0, r) for r in range(W)]
        workers = [[(0, w) for w in range(N)] for _ in range(W)]
        for p in self.pieces:
            load, r = heapq.heappop(ranks)
            heapq.heappush(ranks, (load + len(p), r))
            wload, w = heapq.heappop(workers[r])
            heapq.heappush(workers[r], (wload + len(p), w))
            out[r * N + w].append(p)
        return [tuple(x) for x in out]

    # --- per slot -------------------------------------------------------------------------------

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.topology.n_slots:
            raise WdspqError(f"slot {slot} outside 0..{self.topology.n_slots - 1}")

    def slot_pieces(self, slot: int) -> tuple[Piece, ...]:
        """Pieces dealt to ``slot``, in the order the slot opens them."""
        self._check_slot(slot)
        return self._slot_pieces[slot]

    def slot_real_count(self, slot: int) -> int:
        """Real samples the slot delivers this segment (its pieces' total, less any dropped tail)."""
        self._check_slot(slot)
        return self._kept[slot]

    def slot_dropped_count(self, slot: int) -> int:
        """Real samples of the slot's pieces dropped by ``even="drop"`` (never delivered this epoch)."""
        self._check_slot(slot)
        return self._real[slot] - self._kept[slot]

    def slot_pad_count(self, slot: int) -> int:
        """Pad entries that follow the slot's real entries (``even="pad"`` only; a multiple of B)."""
        self._check_slot(slot)
        return self._pad[slot]

    def slot_length(self, slot: int) -> int:
        """Entries the slot's worker yields this segment: real + pad."""
        self._check_slot(slot)
        return self._kept[slot] + self._pad[slot]

    def pad_source(self, slot: int) -> Piece | None:
        """The piece whose samples the slot's pads repeat, cyclically from its start."""
        self._check_slot(slot)
        ps = self._slot_pieces[slot] or self.pieces
        return ps[0] if ps else None

    def slot_arrays(
        self, slot: int, skip: int = 0, limit: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Entries ``skip .. skip+limit-1`` of the slot as arrays (shard, position, is_pad)."""
        shards, pos, pads = [], [], []
        for s, p, d in self.slot_chunks(slot, skip, limit):
            shards.append(s)
            pos.append(p)
            pads.append(d)
        if not shards:
            z = np.zeros(0, dtype=np.int64)
            return z, z.copy(), np.zeros(0, dtype=bool)
        return np.concatenate(shards), np.concatenate(pos), np.concatenate(pads)

    def slot_sequence(self, slot: int, skip: int = 0) -> Iterator[tuple[int, int, bool]]:
        """The slot's entries from ``skip`` on, as ``(shard, position, is_pad)`` Python tuples, generated
        lazily, one chunk of at most CHUNK entries at a time (a worker's memory does not grow with the
        epoch). Skipping costs O(k) per piece passed, never per sample (R5: the stream then seeks).
        """
        for s, p, d in self.slot_chunks(slot, skip, None):
            yield from zip(s.tolist(), p.tolist(), d.tolist())

    def slot_chunks(
        self, slot: int, skip: int = 0, limit: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Entries ``skip .. skip+limit-1`` of the slot as arrays (shard, position, is_pad), a chunk at a time."""
        length = self.slot_length(slot)
        if skip < 0 or skip > length:
            raise StateError(f"slot {slot}: cannot skip {skip} of {length} entries")
        stop = length if limit is None else min(length, skip + max(0, limit))
        kept = self._kept[slot]
        if skip < kept:
            it = _Interleaver(self._slot_pieces[slot], self._k)
            it.skip(skip)
            for s, p in it.chunks(min(stop, kept) - skip):
                yield s, p, np.zeros(len(s), dtype=bool)
        lo = max(skip, kept)
        src = self.pad_source(slot)
        for a in range(lo, stop, CHUNK):
            b = min(stop, a + CHUNK)
            assert src is not None
            j = np.arange(a - kept, b - kept, dtype=np.int64)
            yield (
                np.full(len(j), src.shard, dtype=np.int64),
                src.start + j % len(src),
                np.ones(len(j), dtype=bool),
            )

    def slot_emitted(self, slot: int, delivered: int) -> list[int]:
        """Real samples taken from each of the slot's pieces among its first ``delivered`` entries."""
        length = self.slot_length(slot)
        if not 0 <= delivered <= length:
            raise StateError(f"slot {slot}: delivered {delivered} is outside [0, {length}]")
        it = _Interleaver(self._slot_pieces[slot], self._k)
        it.skip(min(delivered, self._kept[slot]))
        return it.emitted()

    # --- per rank -------------------------------------------------------------------------------

    def _rank_order(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        if rank not in self._order_cache:
            if not 0 <= rank < self.topology.world_size:
                raise WdspqError(f"rank {rank} outside 0..{self.topology.world_size - 1}")
            N, B = self.topology.workers, int(self.topology.batch_size)
            lengths = [self.slot_length(rank * N + w) for w in range(N)]
            counts = [_ceil_div(n, B) for n in lengths]
            workers, nth = _round_robin(counts)
            lens = np.asarray(lengths, dtype=np.int64)
            sizes = np.minimum(B, lens[workers] - nth * B) if len(workers) else np.zeros(0, dtype=np.int64)
            self._order_cache[rank] = (workers, sizes.astype(np.int64))
        return self._order_cache[rank]

    def rank_batches(self, rank: int) -> int:
        """Batches the rank yields this segment (equal over ranks unless ``even="none"``)."""
        return len(self._rank_order(rank)[0])

    def batch_order(self, rank: int) -> list[tuple[int, int]]:
        """The rank's batches in the order the main process receives them: ``(worker, n_samples)``."""
        w, s = self._rank_order(rank)
        return list(zip(w.tolist(), s.tolist()))

    def _position(self, rank: int, delivered: Sequence[int | None]) -> int:
        """Batches already yielded by the rank, validated against the round-robin order."""
        N, B = self.topology.workers, int(self.topology.batch_size)
        if len(delivered) != self.topology.n_slots:
            raise StateError(f"delivered has {len(delivered)} entries for {self.topology.n_slots} slots")
        nb = np.zeros(N, dtype=np.int64)
        for w in range(N):
            slot = rank * N + w
            d = delivered[slot]
            if d is None:
                raise StateError(f"the state does not know how far slot {slot} (rank {rank}, worker {w}) got")
            length = self.slot_length(slot)
            if not (0 <= d <= length and (d % B == 0 or d == length)):
                raise StateError(
                    f"slot {slot} delivered {d} samples: not a batch boundary of its {length} entries (B={B})"
                )
            nb[w] = _ceil_div(int(d), B)
        workers, _ = self._rank_order(rank)
        t = int(nb.sum())
        if not np.array_equal(np.bincount(workers[:t], minlength=N), nb):
            raise StateError(
                f"rank {rank}: per-worker counts {list(map(int, nb))} are not a prefix of the batch order"
            )
        return t

    def next_worker(self, rank: int, delivered: Sequence[int | None]) -> int:
        """Logical worker that yields the rank's next batch after ``delivered`` (0 if none is left)."""
        t = self._position(rank, delivered)
        workers, _ = self._rank_order(rank)
        return int(workers[t]) if t < len(workers) else 0

    # --- whole plan -----------------------------------------------------------------------------

    def consumed_after(self, delivered: Sequence[int | None]) -> list[int]:
        """New per-shard base (consumed prefix) after every slot delivered ``delivered[slot]`` entries;
        `fold` also gives the ranges consumed past it (pieces that are parts of a shard)."""
        return self.fold(delivered)[0]

    def fold(self, delivered: Sequence[int | None]) -> tuple[list[int], list[list[int]]]:
        """``(base, consumed)`` of the segment that follows, after every slot delivered ``delivered[slot]``
        entries (pads excluded). Needs every slot's count (a merged state).
        """
        if len(delivered) != self.topology.n_slots:
            raise StateError(f"delivered has {len(delivered)} entries for {self.topology.n_slots} slots")
        missing = [s for s, d in enumerate(delivered) if d is None]
        if missing:
            raise StateError(
                f"elastic resume needs every slot's count, slots {missing} are unknown: "
                "merge the per-rank states first (wdspq.cursor.merge_states)"
            )
        taken = []
        for slot, d in enumerate(delivered):
            for p, e in zip(self._slot_pieces[slot], self.slot_emitted(slot, int(d))):  # type: ignore[arg-type]
                taken.append((p.shard, p.start, p.start + e))
        return epoch_order.fold_consumed(self.shard_sizes, self.base, self.consumed, taken)

    def full_delivered(self) -> list[int]:
        """Per-slot counts of a finished segment."""
        return [self.slot_length(s) for s in range(self.topology.n_slots)]
