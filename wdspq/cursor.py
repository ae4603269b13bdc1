"""Shard cursor: the pure planning and state logic behind the stream's exact and elastic resume.

No file I/O, no torch: every function here is a pure function of the manifest's shard sizes, the
seed, the epoch, the topology and the saved counts, so every rank and worker computes the same plan
without communicating (README "Streaming and resuming exactly", R1-R7).

Vocabulary
----------
* **slot**: one (rank, logical worker) pair, ``slot = rank * N + worker`` with
  ``N = max(1, num_workers)``. There are ``W * N`` slots.
* **segment**: a stretch of one epoch run under one topology. It starts from a per-shard ``base``
  (samples of each shard already consumed before the segment: all zeros at the start of an epoch).
  An elastic resume (another topology) folds the finished part of a segment into a new ``base`` and
  starts a new segment.
* **position**: an ordinal of the shard in the epoch's in-shard order (wdspq.epoch_order): position
  ``q`` is the ``q``-th sample read from the shard this epoch, not its place in the file.
* **piece**: ``(shard, start, end)``, an unconsumed range of one shard's positions: the part ``[base,
  size)`` less the ``consumed`` ranges, cut into several pieces under ``shard_order="block"`` when it is
  long (`epoch_order.split_ranges`) so every slot gets work. Every piece belongs to exactly one slot,
  which reads it in order, so the consumed part of every piece is a prefix: this is why a state of
  O(shards + slots) integers suffices (``base`` per shard, plus one range per partly read piece).
* **entry**: one item of a slot's sequence ``(shard, position, is_pad)``. A slot's sequence is its
  real entries followed by its pad entries.

Rules (normative for the stream)
--------------------------------
1. Epoch shard order: ``np.random.default_rng([seed, epoch]).permutation(n_shards)`` when shuffling
   (numpy PCG64 seeded through ``SeedSequence([seed, epoch])``; seed and epoch must be >= 0), else
   manifest order. Positions within a shard follow the epoch's in-shard order (``shard_order``,
   wdspq.epoch_order); the plan never needs it, only the reader does.
2. Dealing: pieces, in epoch order, go one by one to the rank with the fewest samples so far (ties:
   lowest rank), and within it to the worker with the fewest samples (ties: lowest worker). Ranks
   are balanced first because the per-rank totals decide how much padding or dropping is needed.
   With equal shards in a fresh epoch this is round-robin: piece i -> rank i % W, worker (i // W) % N.
3. Interleave: a slot keeps its first ``k`` pieces open and takes one sample from each in turn. When a
   piece runs out, the slot's next unopened piece takes its place at the same position of the
   rotation and the rotation moves on to the next position; when no unopened piece is left the
   exhausted position is removed. See `interleave_reference` for the rule as ten lines of Python.
4. Batching: a worker forms batches of ``B`` consecutive entries of its sequence (its last batch may
   be partial). The main process receives batches round-robin over workers ``0..N-1``, skipping
   exhausted workers -- exactly what ``torch.utils.data.DataLoader`` does for an IterableDataset.
5. Even ranks: ``batches(rank) = sum_w ceil(len_w / B)``.
   ``even="pad"``: ``T = max`` over ranks; each rank adds pad batches of ``B`` entries, one batch at a
   time to its worker with the fewest batches (ties: lowest worker), until it has ``T``. A slot's pads
   follow its real entries; pad ``j`` repeats ``(piece.shard, piece.start + j % len(piece))`` of the
   slot's first piece (the plan's first piece for a slot without pieces): always a valid sample, read
   sequentially from one shard. The stream reports a pad sample with ``window_index == -1``.
   ``even="drop"``: ``T = min`` over ranks; a rank keeps the first ``T`` batches of its round-robin
   order, so each of its workers keeps a prefix of its sequence (`Plan.slot_length`); the rest of
   the segment is not delivered in this epoch (like ``drop_last``).
   ``even="none"``: no change; ranks may yield different numbers of batches.

How a stream uses it
--------------------
* Fresh epoch: ``state = new_epoch_state(...)``; ``r = resume(state, shard_sizes, topology, rank)``.
* Same-topology resume (R3): ``state = CursorState.from_dict(d)``; ``check_compatible(...)``;
  ``r = resume(state, shard_sizes, topology, rank)``: same plan, ``r.skip[slot]`` entries to skip per
  slot, and DataLoader worker ``j`` must play logical worker ``(j + r.start_worker[rank]) % N`` so the
  rotation restarts where it stopped. Only this rank's slots need to be known in the state.
* Elastic resume (R4): same call with another topology (W, N, B, k or even); the state must be a
  merged one (`merge_states`), because the fold needs every slot's count. ``r.state`` is then the
  folded state of the new segment, and ``r.skip`` is all zeros.
* Workers: logical worker ``w`` of rank ``rank`` iterates
  ``r.plan.slot_sequence(r.plan.topology.slot(rank, w), skip=r.skip[slot])``.
* Main process: ``cur = RankCursor(r.plan, rank, r.state)``; for every batch handed to the training
  loop ``cur.record(len(batch), window_index)``; ``cur.state().to_dict()`` is the rank's state dict.
  Before the first batch of a resumed or fresh segment, return the loaded (or start-of-epoch) state
  itself: it may know more ranks than ``cur.state()`` does.
* The rotation rule assumes the DataLoader returns batches in task order (``in_order=True``, the
  default) and that its worker cycle restarts at worker 0 for each new iterator (true with and
  without persistent workers); `test_rotation_matches_torch_dataloader` pins this down.
* A state whose ``complete`` is true has nothing left: the stream should move to the next epoch
  (``new_epoch_state(..., epoch + 1, ...)``) rather than replay.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.random  # noqa: F401 - imported here, not lazily inside the first epoch_shard_order (7 ms)

from . import epoch_order
from .errors import StateError, WdspqError

STATE_VERSION = 2  # 2: in-shard order and consumed ranges (1: sequential order, prefixes only)
EVEN_MODES = ("pad", "drop", "none")
_MASK64 = (1 << 64) - 1
_ZERO_SET = "0" * 16
_CHUNK = 1 << 16


# ----------------------------------------------------------------------------------------------
# topology and epoch order


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


# ----------------------------------------------------------------------------------------------
# interleaving one slot's pieces


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
        """Arrays of the next ``limit`` emissions (or all remaining), in chunks of at most _CHUNK."""
        while limit > 0 and self.open:
            s, _ = self.phase()
            step = min(s, limit, _CHUNK)
            yield self.arrays(0, step)
            self.advance(step)
            limit -= step

    def emitted(self) -> list[int]:
        """Samples taken so far from each piece."""
        return [c - p.start for c, p in zip(self.cur, self.pieces)]


# ----------------------------------------------------------------------------------------------
# the plan of one segment


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

    Build with `Plan.build`. All per-slot sequences, pad counts and batch orders derive from it.
    """

    def __init__(
        self,
        shard_sizes: Sequence[int],
        base: Sequence[int],
        order: Sequence[int],
        topology: Topology,
        consumed: Sequence[Sequence[int]] = (),
        split: bool = False,
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
        self.split = bool(split)
        self.blocks: tuple[int, ...] | None = None if blocks is None else tuple(int(g) for g in blocks)
        ranges = epoch_order.remaining_ranges(self.shard_sizes, self.base, self.consumed, self.order)
        if self.split:
            ranges = epoch_order.split_ranges(ranges, topology.n_slots, self.blocks)
        self.pieces: tuple[Piece, ...] = tuple(Piece(*r) for r in ranges)
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
    def build(
        cls,
        shard_sizes: Sequence[int],
        base: Sequence[int],
        order: Sequence[int],
        topology: Topology,
        consumed: Sequence[Sequence[int]] = (),
        split: bool = False,
        blocks: Sequence[int] | None = None,
    ) -> Plan:
        """Plan of the segment that starts from ``base`` (per-shard consumed prefix) and the ``consumed``
        ranges past it, shards in ``order``; ``split`` cuts long ranges into pieces (``shard_order="block"``),
        on the shards' ordinal block boundaries where it can when ``blocks`` (samples per block) is given."""
        return cls(shard_sizes, base, order, topology, consumed, split, blocks)

    @classmethod
    def for_state(cls, state: CursorState, shard_sizes: Sequence[int], blocks: Sequence[int] | None = None) -> Plan:
        """Plan of the segment a state belongs to (its base, consumed ranges, epoch order and topology)."""
        order = epoch_shard_order(len(shard_sizes), state.seed, state.epoch, state.shuffle)
        return cls(shard_sizes, state.base, order, state.topology, state.consumed, state.shard_order == "block",
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
        for s, p, d in self._slot_chunks(slot, skip, limit):
            shards.append(s)
            pos.append(p)
            pads.append(d)
        if not shards:
            z = np.zeros(0, dtype=np.int64)
            return z, z.copy(), np.zeros(0, dtype=bool)
        return np.concatenate(shards), np.concatenate(pos), np.concatenate(pads)

    def slot_sequence(self, slot: int, skip: int = 0) -> Iterator[tuple[int, int, bool]]:
        """The slot's entries from ``skip`` on, as ``(shard, position, is_pad)`` Python tuples, generated
        lazily, one chunk of at most _CHUNK entries at a time (a worker's memory does not grow with the
        epoch). Skipping costs O(k) per piece passed, never per sample (R5: the stream then seeks).
        """
        for s, p, d in self._slot_chunks(slot, skip, None):
            yield from zip(s.tolist(), p.tolist(), d.tolist())

    def _slot_chunks(
        self, slot: int, skip: int, limit: int | None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        length = self.slot_length(slot)
        if skip < 0 or skip > length:
            raise StateError(f"slot {slot}: cannot skip {skip} of {length} entries")
        stop = length if limit is None else min(length, skip + max(0, limit))
        kept = self._kept[slot]
        if skip < kept:
            it = _Interleaver(self._slot_pieces[slot], int(self.topology.interleave))
            it.skip(skip)
            for s, p in it.chunks(min(stop, kept) - skip):
                yield s, p, np.zeros(len(s), dtype=bool)
        lo = max(skip, kept)
        src = self.pad_source(slot)
        for a in range(lo, stop, _CHUNK):
            b = min(stop, a + _CHUNK)
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
        it = _Interleaver(self._slot_pieces[slot], int(self.topology.interleave))
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

    def rank_done(self, rank: int, delivered: Sequence[int | None]) -> bool:
        """Whether the rank has yielded all its batches of the segment."""
        return self._position(rank, delivered) == self.rank_batches(rank)

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


# ----------------------------------------------------------------------------------------------
# audit digests (issue 9)


def mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser of int64 values, as uint64: a well-spread 64-bit hash of each index."""
    z = np.asarray(values, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z


def update_digests(ordered: str, set_digest: str, window_index: Any) -> tuple[str, str]:
    """Fold one batch's ``window_index`` values (pads, ``-1``, excluded) into the two audit digests.

    ordered: ``sha256(bytes.fromhex(ordered) || int64-LE indices)`` hex, chained per batch (order-
    and batch-sensitive; "" is the empty chain; a batch of only pads leaves it unchanged).
    set_digest: 16 hex digits of ``sum(mix64(i)) mod 2**64`` (order-insensitive, mergeable by sum).
    """
    idx = np.asarray(window_index).astype(np.int64, copy=False).reshape(-1)
    idx = idx[idx != -1]
    if idx.size == 0:
        return ordered, set_digest
    h = hashlib.sha256(bytes.fromhex(ordered))
    h.update(idx.astype("<i8").tobytes())
    total = (int(set_digest, 16) + int(mix64(idx).sum(dtype=np.uint64))) & _MASK64
    return h.hexdigest(), f"{total:016x}"


def combine_set_digests(digests: Sequence[str]) -> str:
    """Set digest of a union of disjoint deliveries: the sum of theirs mod 2**64."""
    return f"{sum(int(d, 16) for d in digests) & _MASK64:016x}"


def set_digest_of(window_indices: Any) -> str:
    """Set digest of a collection of window indices, from scratch (pads excluded)."""
    return update_digests("", _ZERO_SET, window_indices)[1]


# ----------------------------------------------------------------------------------------------
# state


@dataclass
class CursorState:
    """Where an epoch stands: plain data, O(shards + slots), JSON via `to_dict`/`from_dict`.

    ``delivered[slot]`` counts the entries (real + pad) the slot yielded in this segment, ``None``
    where this state does not know (a rank's own state knows only its own slots; `merge_states`
    builds the full state an elastic resume needs). ``digest_ordered``/``digest_set`` are per rank
    (``None`` where unknown) for this segment; ``digest_carried`` is the set digest of the windows
    delivered in earlier segments of the epoch (before an elastic fold). ``complete``: every slot this
    state knows has delivered all its entries (for a full state: the epoch is over). ``shard_order``
    names the in-shard order (wdspq.epoch_order); ``consumed`` lists ``[shard, start, end]`` position
    ranges consumed in earlier segments past the shard's ``base`` (empty unless a piece was part of a
    shard when the topology changed).
    """

    manifest_id: str
    spec_id: str
    seed: int
    shuffle: bool
    epoch: int
    topology: Topology
    base: list[int]
    delivered: list[int | None]
    digest_ordered: list[str | None] = field(default_factory=list)
    digest_set: list[str | None] = field(default_factory=list)
    digest_carried: str = _ZERO_SET
    complete: bool = False
    version: int = STATE_VERSION
    shard_order: str = "block"
    consumed: list[list[int]] = field(default_factory=list)

    def is_full(self) -> bool:
        """Whether every slot's count and every rank's digests are known."""
        return (
            all(d is not None for d in self.delivered)
            and all(d is not None for d in self.digest_ordered)
            and all(d is not None for d in self.digest_set)
        )

    def known_ranks(self) -> list[int]:
        """Ranks whose slots are all known in this state."""
        N = self.topology.workers
        return [
            r
            for r in range(self.topology.world_size)
            if all(d is not None for d in self.delivered[r * N : (r + 1) * N])
        ]

    def total_set_digest(self) -> str:
        """Set digest of every window delivered so far in the epoch (needs a full state)."""
        if any(d is None for d in self.digest_set):
            raise StateError("the epoch's set digest needs every rank's digest: merge the per-rank states")
        return combine_set_digests([self.digest_carried, *self.digest_set])  # type: ignore[list-item]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (ints, strs, bools, lists, None)."""
        return {
            "version": self.version,
            "manifest_id": self.manifest_id,
            "spec_id": self.spec_id,
            "seed": int(self.seed),
            "shuffle": bool(self.shuffle),
            "epoch": int(self.epoch),
            "topology": self.topology.to_dict(),
            "shard_order": self.shard_order,
            "base": [int(b) for b in self.base],
            "consumed": [[int(x) for x in r] for r in self.consumed],
            "delivered": [None if d is None else int(d) for d in self.delivered],
            "digest": {
                "ordered": list(self.digest_ordered),
                "set": list(self.digest_set),
                "carried": self.digest_carried,
            },
            "complete": bool(self.complete),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CursorState:
        """Inverse of `to_dict`; raises StateError naming what is missing or malformed."""
        if isinstance(d, CursorState):
            return d
        if not isinstance(d, Mapping):
            raise StateError(f"a loader state must be a dict, got {type(d).__name__}")
        version = d.get("version")
        if version == 1:  # saved before in-shard orders: the sequential order, whole shards (same plan)
            d = {**d, "shard_order": "sequential", "consumed": []}
        elif version != STATE_VERSION:
            raise StateError(f"state format version {version!r} is not supported (expected {STATE_VERSION})")
        missing = [
            k
            for k in (
                "manifest_id",
                "spec_id",
                "seed",
                "shuffle",
                "epoch",
                "topology",
                "shard_order",
                "base",
                "consumed",
                "delivered",
                "digest",
                "complete",
            )
            if k not in d
        ]
        if missing:
            raise StateError(f"state is missing {', '.join(missing)}")
        topo = Topology.from_dict(d["topology"])
        digest = d["digest"]
        if not isinstance(d["complete"], bool):
            raise StateError(f"state field 'complete' is {d['complete']!r}, expected true or false")
        try:
            st = cls(
                manifest_id=str(d["manifest_id"]),
                spec_id=str(d["spec_id"]),
                seed=_state_int(d["seed"], "seed"),
                shuffle=bool(d["shuffle"]),
                epoch=_state_int(d["epoch"], "epoch"),
                topology=topo,
                base=[_state_int(b, f"base[{i}]") for i, b in enumerate(d["base"])],
                delivered=[None if x is None else _state_int(x, f"delivered[{i}]") for i, x in enumerate(d["delivered"])],
                digest_ordered=[None if x is None else str(x) for x in digest["ordered"]],
                digest_set=[None if x is None else str(x) for x in digest["set"]],
                digest_carried=str(digest["carried"]),
                complete=d["complete"],
                version=int(version),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise StateError(f"state is malformed: {e}") from e
        try:
            st.shard_order, st.consumed = str(d["shard_order"]), [[int(x) for x in r] for r in d["consumed"]]
        except (TypeError, ValueError) as e:
            raise StateError(f"state is malformed: {e}") from e
        st.version = STATE_VERSION  # a format-1 state is re-saved in format 2 (same plan, sequential order)
        if st.shard_order not in epoch_order.ORDERS:
            raise StateError(f"state shard_order {st.shard_order!r} is not one of {epoch_order.ORDERS}")
        if any(len(r) != 3 for r in st.consumed):
            raise StateError("state consumed ranges must be [shard, start, end] each")
        if len(st.delivered) != topo.n_slots:
            raise StateError(
                f"state has {len(st.delivered)} delivered counts for {topo.n_slots} slots ({topo.describe()})"
            )
        if len(st.digest_ordered) != topo.world_size or len(st.digest_set) != topo.world_size:
            raise StateError(f"state digests do not have one entry per rank (world_size={topo.world_size})")
        if any(x is not None and x < 0 for x in st.delivered) or any(b < 0 for b in st.base):
            raise StateError("state has negative counts")
        if st.epoch < 0:
            raise StateError(f"state epoch {st.epoch} is negative")
        return st

    def for_rank(self, rank: int) -> CursorState:
        """Copy that keeps only ``rank``'s slots and digests (others become unknown)."""
        N = self.topology.workers
        return CursorState(
            **{
                **self.__dict__,
                "delivered": [d if s // N == rank else None for s, d in enumerate(self.delivered)],
                "digest_ordered": [d if r == rank else None for r, d in enumerate(self.digest_ordered)],
                "digest_set": [d if r == rank else None for r, d in enumerate(self.digest_set)],
                "base": list(self.base),
                "consumed": [list(r) for r in self.consumed],
            }
        )


def _state_int(value: Any, name: str) -> int:
    """An integer field of a saved state; 160.5 (or "160", or true) is an edited or corrupt state, not 160."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)  # JSON tools that write every number as a float
    raise StateError(f"state field {name!r} is {value!r}, expected an integer")


def _check_complete(st: CursorState, plan: Plan) -> None:
    """`complete: true` must follow from the counts (every slot the state knows delivered all its entries):
    a hand-set one would silently skip the rest of the epoch. (`false` with nothing left is harmless:
    the epoch resumes to nothing, e.g. a fresh state of an empty export.)"""
    known = [(s, d) for s, d in enumerate(st.delivered) if d is not None]
    short = next(((s, d) for s, d in known if d != plan.slot_length(s)), None)
    if st.complete and (short is not None or not known):
        detail = f"slot {short[0]} delivered {short[1]} of its {plan.slot_length(short[0])} entries" if short else "no slot is known"
        raise StateError(f"state field 'complete' is true but {detail}; it follows from the counts (was the "
                         "state edited?)")


def new_epoch_state(
    manifest_id: str,
    spec_id: str,
    seed: int,
    shuffle: bool,
    epoch: int,
    n_shards: int,
    topology: Topology,
    shard_order: str | None = None,
) -> CursorState:
    """Start-of-epoch state: nothing consumed. Full (every slot known), so any rank may save it.
    ``shard_order`` defaults to ``"block"`` when shuffling, else ``"sequential"`` (wdspq.epoch_order)."""
    W = topology.world_size
    order = epoch_order.check_order(shard_order or epoch_order.default_order(shuffle), shuffle)
    return CursorState(
        manifest_id=manifest_id,
        spec_id=spec_id,
        seed=int(seed),
        shuffle=bool(shuffle),
        epoch=int(epoch),
        topology=topology,
        base=[0] * int(n_shards),
        delivered=[0] * topology.n_slots,
        digest_ordered=[""] * W,
        digest_set=[_ZERO_SET] * W,
        digest_carried=_ZERO_SET,
        complete=False,
        shard_order=order,
        consumed=[],
    )


def _short(s: str) -> str:
    return s if len(s) <= 16 else s[:12] + "..."


def check_compatible(
    state: CursorState | Mapping[str, Any],
    manifest_id: str,
    spec_id: str,
    seed: int,
    shuffle: bool,
    n_shards: int,
    shard_order: str | None = None,
) -> CursorState:
    """Raise StateError naming every difference between the state and the stream; return the state.

    Epoch and topology may differ (the stream follows the state's epoch; another topology is an
    elastic resume). ``shard_order`` defaults to the stream's default for ``shuffle``.
    """
    st = CursorState.from_dict(state)  # type: ignore[arg-type]
    problems = []
    if st.manifest_id != manifest_id:
        problems.append(
            f"state was saved for manifest {_short(st.manifest_id)}, this stream reads {_short(manifest_id)}"
        )
    if st.spec_id != spec_id:
        problems.append(f"window spec {_short(st.spec_id)} in the state vs {_short(spec_id)} in this stream")
    if st.seed != seed:
        problems.append(f"seed {st.seed} in the state vs {seed} in this stream")
    if st.shuffle != bool(shuffle):
        problems.append(f"shuffle={st.shuffle} in the state vs shuffle={bool(shuffle)} in this stream")
    order = shard_order or epoch_order.default_order(shuffle)
    if st.shard_order != order:
        hint = ""
        if st.shard_order == "sequential":
            hint = (" (states of format 1, saved before per-epoch in-shard orders, read shards sequentially: "
                    "open the stream with shard_order='sequential' to resume one)")
        problems.append(f"shard_order={st.shard_order!r} in the state vs {order!r} in this stream{hint}")
    if len(st.base) != n_shards:
        problems.append(f"state covers {len(st.base)} shards, this stream has {n_shards}")
    if problems:
        raise StateError("loader state does not match this stream: " + "; ".join(problems))
    return st


@dataclass
class Resume:
    """What a stream needs to continue from a state under a topology.

    ``state``: the state of the segment being continued (the folded one after an elastic resume).
    ``skip[slot]``: entries the slot's worker skips (``None`` for slots this state does not know).
    ``start_worker[rank]``: logical worker of the rank's next batch; DataLoader worker ``j`` plays
    logical worker ``(j + start_worker[rank]) % N`` (``None`` for ranks this state does not know).
    """

    plan: Plan
    state: CursorState
    skip: list[int | None]
    start_worker: list[int | None]
    elastic: bool


def resume(
    state: CursorState | Mapping[str, Any],
    shard_sizes: Sequence[int],
    topology: Topology,
    rank: int | None = None,
    blocks: Sequence[int] | None = None,
) -> Resume:
    """Plan the continuation of ``state`` under ``topology``.

    Same topology (`Topology.key`): the state's plan, skipping what each slot delivered (R3); a
    per-rank state suffices, but ``rank``'s slots must be known when ``rank`` is given.
    Other topology: fold the segment into a new base (needs a full, merged state) and plan a new
    segment from it with zero counts (R4). ``blocks``: samples per ordinal block of each shard
    (`epoch_order.block_size`), where pieces are cut; the stream passes its own, and every caller that
    must agree with a stream's plan must pass the same.
    """
    st = CursorState.from_dict(state)  # type: ignore[arg-type]
    if len(st.base) != len(shard_sizes):
        raise StateError(f"state covers {len(st.base)} shards, the manifest has {len(shard_sizes)}")
    W = topology.world_size
    if st.topology.key() == topology.key():
        st = CursorState(**{**st.__dict__, "topology": topology})  # num_workers 0 and 1 plan alike
        old = Plan.for_state(st, shard_sizes, blocks)
        _check_complete(st, old)
        if rank is not None and rank not in st.known_ranks():
            raise StateError(
                f"this state does not hold rank {rank}'s position (it knows ranks {st.known_ranks()}): "
                "load the state rank saved, or a merged state"
            )
        start: list[int | None] = [None] * W
        for r in st.known_ranks():
            start[r] = old.next_worker(r, st.delivered)
        return Resume(plan=old, state=st, skip=list(st.delivered), start_worker=start, elastic=False)
    if not st.is_full():
        raise StateError(
            f"resuming under another topology ({st.topology.describe()} -> {topology.describe()}) needs every "
            f"rank's position, this state knows ranks {st.known_ranks()}: merge the per-rank states with "
            "wdspq.cursor.merge_states"
        )
    old = Plan.for_state(st, shard_sizes, blocks)
    _check_complete(st, old)
    # A finished epoch stays finished under any topology: with even="drop" its dropped surplus was never
    # delivered, and folding the counts would hand it out now (field report item 1).
    if st.complete:
        base, consumed = [int(x) for x in shard_sizes], []
    else:
        base, consumed = old.fold(st.delivered)
    new = Plan(shard_sizes, base, old.order, topology, consumed, old.split, blocks)
    folded = CursorState(
        manifest_id=st.manifest_id,
        spec_id=st.spec_id,
        seed=st.seed,
        shuffle=st.shuffle,
        epoch=st.epoch,
        topology=topology,
        base=base,
        delivered=[0] * topology.n_slots,
        digest_ordered=[""] * W,
        digest_set=[_ZERO_SET] * W,
        digest_carried=st.total_set_digest(),
        complete=new.full_delivered() == [0] * topology.n_slots,
        shard_order=st.shard_order,
        consumed=consumed,
    )
    return Resume(plan=new, state=folded, skip=[0] * topology.n_slots, start_worker=[0] * W, elastic=True)


def merge_states(states: Sequence[CursorState | Mapping[str, Any]]) -> dict[str, Any]:
    """Combine per-rank states (each knows its own slots) into one full state dict.

    Everything but the per-slot counts and per-rank digests must agree; a slot known by two states
    must have the same count. Raises StateError when they disagree or a rank is missing.
    """
    if not states:
        raise StateError("merge_states needs at least one state")
    sts = [CursorState.from_dict(s) for s in states]  # type: ignore[arg-type]
    first = sts[0].to_dict()
    shared = ("version", "manifest_id", "spec_id", "seed", "shuffle", "epoch", "topology", "shard_order", "base",
              "consumed")
    for i, s in enumerate(sts[1:], 1):
        d = s.to_dict()
        for k in shared:
            if d[k] != first[k]:
                a, b = first[k], d[k]
                if k in ("base", "consumed"):
                    a, b = "(one list)", "(another list)"
                raise StateError(
                    f"cannot merge states: {k} differs between state 0 ({a}) and state {i} ({b})"
                )
        if d["digest"]["carried"] != first["digest"]["carried"]:
            raise StateError(f"cannot merge states: carried set digest differs between state 0 and state {i}")

    def combine(name: str, lists: list[list[Any]]) -> list[Any]:
        out: list[Any] = [None] * len(lists[0])
        for i, lst in enumerate(lists):
            for j, v in enumerate(lst):
                if v is None:
                    continue
                if out[j] is not None and out[j] != v:
                    raise StateError(
                        f"cannot merge states: {name} {j} is {out[j]} in one state and {v} in state {i}"
                    )
                out[j] = v
        return out

    merged = CursorState(**{**sts[0].__dict__})
    merged.delivered = combine("slot", [s.delivered for s in sts])
    merged.digest_ordered = combine("ordered digest of rank", [s.digest_ordered for s in sts])
    merged.digest_set = combine("set digest of rank", [s.digest_set for s in sts])
    merged.complete = all(s.complete for s in sts)
    if not merged.is_full():
        known = sorted({r for s in sts for r in s.known_ranks()})
        missing = [r for r in range(merged.topology.world_size) if r not in known]
        raise StateError(f"cannot merge states: no state for rank(s) {missing} (have {known})")
    out = merged.to_dict()
    # a mixture's states also name its sources (wdspq.mixture_stream): kept when every state names the same
    extra = [s.get("mixture") if isinstance(s, Mapping) else None for s in states]
    if extra[0] is not None and all(e == extra[0] for e in extra):
        out["mixture"] = extra[0]
    return out


class RankCursor:
    """Main-process bookkeeping of one rank: counts what was yielded to the training loop.

    It knows from the plan which logical worker produced each batch (round-robin-skip-exhausted) and
    checks the batch size, so a wiring mistake fails loudly instead of corrupting the state.
    """

    def __init__(self, plan: Plan, rank: int, state: CursorState) -> None:
        self.plan, self.rank = plan, rank
        self._state = state
        N = plan.topology.workers
        self._slots = list(range(rank * N, (rank + 1) * N))
        self.delivered = [
            int(state.delivered[s]) if state.delivered[s] is not None else -1 for s in self._slots
        ]
        if min(self.delivered, default=0) < 0:
            raise StateError(f"the state does not hold rank {rank}'s position")
        self._t = plan._position(rank, state.delivered)
        self._workers, self._sizes = plan._rank_order(rank)
        self.start_worker = self.next_worker() or 0
        self.ordered = state.digest_ordered[rank] if state.digest_ordered[rank] is not None else ""
        self.set_digest = state.digest_set[rank] if state.digest_set[rank] is not None else _ZERO_SET

    def next_worker(self) -> int | None:
        """Logical worker of the next batch, None when the rank is done."""
        return int(self._workers[self._t]) if self._t < len(self._workers) else None

    def expected_size(self) -> int | None:
        """Samples in the next batch, None when the rank is done."""
        return int(self._sizes[self._t]) if self._t < len(self._sizes) else None

    @property
    def done(self) -> bool:
        """Whether the rank has yielded every batch of the segment."""
        return self._t >= len(self._workers)

    @property
    def batches_left(self) -> int:
        """Batches the rank still yields in this segment."""
        return len(self._workers) - self._t

    def record(self, n_samples: int, window_index: Any = None) -> int:
        """Count one batch handed to the training loop; returns its logical worker.

        ``window_index`` (the batch's values, pads -1) updates the audit digests when given.
        """
        if self.done:
            raise StateError(f"rank {self.rank} recorded a batch after its last one of the segment")
        w, n = int(self._workers[self._t]), int(self._sizes[self._t])
        if n_samples != n:
            raise StateError(
                f"rank {self.rank}: batch {self._t} should hold {n} samples (worker {w}), got {n_samples}"
            )
        self.delivered[w] += n
        self._t += 1
        if window_index is not None:
            self.ordered, self.set_digest = update_digests(self.ordered, self.set_digest, window_index)
        return w

    def state(self) -> CursorState:
        """This rank's state: its own slots and digests; other ranks' unknown unless world_size is 1."""
        st = self._state
        N, rank = self.plan.topology.workers, self.rank
        delivered: list[int | None] = [None] * self.plan.topology.n_slots
        for w, d in enumerate(self.delivered):
            delivered[rank * N + w] = d
        W = self.plan.topology.world_size
        ordered: list[str | None] = [None] * W
        sets: list[str | None] = [None] * W
        ordered[rank], sets[rank] = self.ordered, self.set_digest
        return CursorState(
            manifest_id=st.manifest_id,
            spec_id=st.spec_id,
            seed=st.seed,
            shuffle=st.shuffle,
            epoch=st.epoch,
            topology=self.plan.topology,
            base=list(self.plan.base),
            delivered=delivered,
            digest_ordered=ordered,
            digest_set=sets,
            digest_carried=st.digest_carried,
            complete=self.done,
            shard_order=st.shard_order,
            consumed=[list(r) for r in self.plan.consumed],
        )
