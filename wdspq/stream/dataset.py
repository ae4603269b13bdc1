"""Streaming the shards into training: `ShardStream` (an IterableDataset) and `StreamLoader` (a DataLoader).

The order of an epoch is a pure function of the manifest, seed, epoch and topology (wdspq.cursor): each
(rank, worker) slot reads its pieces (shards, or ranges of a shard) in the epoch's in-shard order
(wdspq.epoch_order: a block shuffle by default), interleaving `interleave` open pieces, with ranged reads at
byte offsets from the shard indexes (R5). `StreamLoader` counts, in the main process, the batches it hands
to the training loop; its `state_dict()` is a small JSON-able dict from which a fresh process continues
with exactly the batches an uninterrupted run would have produced (R3), or, under another world size,
worker count or batch size, finishes the epoch exactly once (R4).
"""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, get_worker_info

from ..cursor import (
    CursorState,
    Plan,
    RankCursor,
    Topology,
    check_compatible,
    epoch_shard_order,
    merge_states,
    new_epoch_state,
    resume,
)
from ..epoch_order import block_size, check_order, default_order, in_shard_order, read_in_order
from ..errors import StateError, WdspqError
from ..shardfmt import Manifest, load_manifest
from .pipeline import ShuffleFlag, StageContext, StageError, StreamPipeline, apply_batch_stages, run_stages
from .reader import SampleReader
from .ring import RING_KEY, BatchLayout, BatchRing, batch_tensors


def dist_topology(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): explicit values, else torch.distributed when initialised, else RANK/WORLD_SIZE, else (0, 1).

    Only one of the two given is an error: completing it from the environment could silently pick
    another rank's share (field report item 3)."""
    if (rank is None) != (world_size is None):
        given = f"rank={rank}" if rank is not None else f"world_size={world_size}"
        raise WdspqError(f"{given} was given without {'world_size' if rank is not None else 'rank'}: give both "
                         "(an explicit topology) or neither (torch.distributed or RANK/WORLD_SIZE decide)")
    if rank is not None and world_size is not None:
        r, w = int(rank), int(world_size)
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        r, w = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= r < w:
        raise WdspqError(f"rank {r} is outside world size {w}")
    return r, w


class ShardStream(StreamPipeline):
    """Stream the samples of an export (a shard folder, a manifest path, or `s3://bucket/prefix`).

    A `webdataset.DataPipeline` (cursor, ranged read and decode stages; wdspq.stream.pipeline, docs/stages.md):
    add one-in, one-out stages with webdataset's API, `stream.map(f, rng=True)` for per-sample randomness.

    Yields the same sample dicts (torch tensors, same keys, dtypes, shapes and values) as
    `ParquetWindowDataset[window_index]`. Iterated directly (or by a plain DataLoader) it delivers one
    epoch of this rank's share, batch size 1; use `StreamLoader` for batching and resumable state.
    Pad samples (repeats that keep ranks even, `even="pad"`) carry `window_index == -1`.

    `on_error`: `"raise"` (default) raises ShardError naming the shard and member of a bad sample;
    `"skip"` replaces each bad sample by a placeholder (zeros, masks false, `window_index` and
    `episode_index` -1) so batches and the cursor stay exact, warns once per worker and logs the count
    (wdspq.stream.reader). `verify_checksums=True` checks each shard's size and sha256 against the manifest
    before its first read in a process.

    `shard_order`: `"block"` (default with `shuffle=True`): every epoch reads each shard in a new order,
    ~0.5 MiB chunks dealt to new ~8 MiB blocks and read row by row across them, and long shards are cut into
    pieces so every worker has work; `"sequential"` (default with `shuffle=False`): each shard read front
    to back, whole, in the same order every epoch (the version 1 order; README "Epoch order").
    """

    def __new__(cls, source: Any = None, *args: Any, **kwargs: Any) -> ShardStream:
        """`ShardStream([Source, ...])` (a list of sources, or one `Source`) is a weighted mixture of exports
        (wdspq.stream.mixture.MixtureStream, docs/mixtures.md); a path is one export, as always."""
        if cls is ShardStream and _is_mixture_source(source):
            from .mixture import MixtureStream

            return super().__new__(MixtureStream)
        return super().__new__(cls)

    def __init__(
        self,
        source: str | os.PathLike,
        shuffle: bool = True,
        seed: int = 0,
        interleave: int = 4,
        even: str = "pad",
        rank: int | None = None,
        world_size: int | None = None,
        storage_options: dict[str, Any] | None = None,
        on_error: str = "raise",
        verify_checksums: bool = False,
        shard_order: str | None = None,
        samples_per_epoch: int | None = None,
    ) -> None:
        super().__init__()
        if samples_per_epoch is not None:
            raise WdspqError("samples_per_epoch is for mixtures (ShardStream([wdspq.Source(...), ...])); an epoch of "
                             "one export is every window once")
        self.source = str(source)
        self.manifest: Manifest = load_manifest(self.source, storage_options)
        self.manifest.warn_old_window_rules()
        self.shuffle = ShuffleFlag(shuffle)  # a bool to read; calling it (webdataset's shuffle) is refused
        self.shard_order = check_order(shard_order or default_order(bool(shuffle)), bool(shuffle))
        self.seed = int(seed)
        if self.seed < 0:
            raise WdspqError(f"seed must be >= 0, got {seed}")
        self.interleave = int(interleave)
        self.even = even
        self.rank, self.world_size = dist_topology(rank, world_size)
        self.epoch = 0
        self._codec = self.manifest.codec()
        self._reader = SampleReader(self.manifest, self._codec, on_error, verify_checksums)
        self._control: torch.Tensor | None = None  # set by StreamLoader: the plan of the next iteration
        self._batched = False  # set by StreamLoader: collate in the worker (default collation only)
        self._ring: BatchRing | None = None  # set by StreamLoader: reusable shared blocks for worker batches
        self._ring_generation = 0
        self._topology: Topology | None = None
        self._order_epoch = 0  # epoch of the iteration being read (its in-shard orders)
        self._blocks = [block_size(int(e["samples"]), e.get("bytes")) for e in self.manifest.shards]
        Topology(world_size=self.world_size, interleave=self.interleave, even=even)  # validate early

    # -- identity ------------------------------------------------------------------------------------
    @property
    def shard_sizes(self) -> list[int]:
        return self.manifest.shard_sizes

    def __len__(self) -> int:
        """Windows in the export (all ranks together, pads excluded)."""
        return self.manifest.num_windows

    def stats(self) -> dict[str, dict[str, torch.Tensor]]:
        """The export's normalisation statistics per stream ({count, mean, std, min, max} tensors; see
        `wdspq.Normalize`), read from the manifest (checked against its sha256 when it was loaded)."""
        from ..normalize import stats_tensors

        if "stats" not in self.manifest.data:
            raise WdspqError(f"{self.manifest.url}: this export records no statistics")
        return stats_tensors(self.manifest.data["stats"])

    def _annotate_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """The loader's saved state, with what this kind of stream adds (a mixture names its sources)."""
        return state

    def _check_state(self, state: Any) -> None:
        """Raise StateError for a state this stream cannot continue, beyond `check_compatible` (mixtures)."""
        if isinstance(state, dict) and "mixture" in state:
            raise StateError("loader state was saved for a mixture of exports, not this single export")

    def set_epoch(self, epoch: int) -> None:
        """Epoch of the next direct iteration (StreamLoader has its own `set_epoch`)."""
        self.epoch = int(epoch)

    def fresh_state(self, epoch: int, topology: Topology) -> CursorState:
        m = self.manifest
        return new_epoch_state(m.id, m.spec_id, self.seed, bool(self.shuffle), epoch, len(m.shards), topology,
                               self.shard_order)

    def in_shard_order(self, shard: int, epoch: int) -> np.ndarray:
        """Sample positions of `shard` in the order epoch `epoch` reads them (wdspq.epoch_order)."""
        return in_shard_order(self.seed, epoch, shard, self.shard_sizes[shard], self._blocks[shard], self.shard_order)

    # -- reading -------------------------------------------------------------------------------------
    def _slot_items(self, plan: Plan, slot: int, skip: int, raw: bool,
                    entries: Iterator[tuple[int, int, bool]] | None = None) -> Iterator[tuple[Any, bool]]:
        """(sample, is_pad) of one slot from entry `skip` on, reading each shard run with one ranged read.

        A sample is a dict of arrays, or with `raw` its record bytes; each sample owns its buffer.
        `entries`: the slot's (shard, position, is_pad) from entry `skip` on (the pipeline's cursor
        stage); by default the plan's.
        """
        # The slot's plan is generated chunk by chunk (Plan.slot_sequence), never materialised: memory is
        # O(its pieces + one chunk), not O(its windows). A piece's real entries are consecutive positions
        # [lo, end), so one reader serves the piece's whole run; the run ends where the slot stops taking from
        # the piece (its end, or earlier under even="drop"). Positions are ordinals of the epoch's in-shard
        # order: `_ordered` reads them with one ranged read per chunk of a block (sequential: one for the run). A
        # slot may hold several pieces of one shard, so a run is found by its piece, not its shard.
        pieces = plan.slot_pieces(slot)
        taken = plan.slot_emitted(slot, plan.slot_real_count(slot))
        runs: dict[int, list[tuple[int, int]]] = {}
        for piece, e in zip(pieces, taken):
            runs.setdefault(piece.shard, []).append((piece.start, piece.start + e))
        perms: dict[int, np.ndarray] = {}
        readers: dict[tuple[int, int], Iterator[Any]] = {}
        pad_reader: Iterator[Any] | None = None
        next_pad = (-1, -1)
        try:
            for s, p, is_pad in plan.slot_sequence(slot, skip) if entries is None else entries:
                if not is_pad:
                    a, end = next(r for r in runs[s] if r[0] <= p < r[1])
                    it = readers.get((s, a))
                    if it is None:
                        it = readers[s, a] = self._ordered(plan, s, p, end, raw, perms)
                    sample = next(it, None)
                    if p + 1 == end:
                        _close(readers.pop((s, a)))  # the run is done; its samples keep their buffers (or mapping)
                        if not any(k[0] == s for k in readers):
                            perms.pop(s, None)
                else:
                    if (s, p) != next_pad:
                        _close(pad_reader)
                        src = plan.pad_source(slot)
                        assert src is not None
                        pad_reader = self._ordered(plan, s, p, src.end, raw, perms)
                    sample = next(pad_reader, None)  # type: ignore[arg-type]
                    next_pad = (s, p + 1)
                if sample is None:
                    raise WdspqError(f"{self.manifest.storage.url(self.manifest.shards[s]['name'])}: sample {p} missing")
                yield sample, is_pad
        finally:
            for it in readers.values():
                _close(it)
            _close(pad_reader)
            self._reader.end_iteration()

    def _ordered(self, plan: Plan, shard: int, q0: int, q1: int, raw: bool, perms: dict[int, np.ndarray]) -> Iterator[Any]:
        """Samples at ordinals `q0 .. q1-1` of `shard` in this epoch's order: one ranged read per chunk."""
        perm = perms.get(shard)
        if perm is None:
            perm = perms[shard] = in_shard_order(self.seed, self._order_epoch, shard, plan.shard_sizes[shard],
                                                 self._blocks[shard], self.shard_order)
        run = self._reader.run_records if raw else self._reader.run
        return read_in_order(lambda a, b: run(shard, a, b), perm, self._blocks[shard], q0, q1)

    def _decode_records(self, records: Iterator[tuple[Any, bool]]) -> Iterator[dict[str, torch.Tensor]]:
        """Records `(bytes, is_pad)` as sample dicts of tensors viewing each record (pads get window_index -1).

        Tensors are made straight from the record's fields (no intermediate dict of arrays): with ~16 keys
        this per-sample work is what bounds a per-sample stream, so it is kept to one dict."""
        record_array, keys, from_numpy = self._codec.record_array, list(self._codec.schema), torch.from_numpy
        for record, is_pad in records:
            rec = record_array(record)
            t = {k: from_numpy(rec[k]) for k in keys}
            if is_pad:
                t["window_index"] = torch.tensor(-1, dtype=torch.int64)
            yield t

    def _collate_records(self, items: Iterator[tuple[Any, bool]], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Records `(bytes, is_pad)` collated in the worker, `batch_size` at a time (the last batch may be short).

        Equal to default collation of `_decode_records`, but each sample costs one copy of its record into a
        batch row and each key one vectorised copy per batch, instead of per-sample tensors and stacking.
        """
        dtype = self._codec.dtype
        info = get_worker_info()
        ring = self._ring if info is not None else None
        rec = np.empty(batch_size, dtype=dtype)  # reused: its pages are faulted in once per iteration
        rows = rec.view(np.uint8).reshape(batch_size, dtype.itemsize)
        try:
            while True:
                n, pads = 0, []
                for record, is_pad in itertools.islice(items, batch_size):
                    rows[n] = np.frombuffer(record, dtype=np.uint8)
                    if is_pad:
                        pads.append(n)
                    n += 1
                if n == 0:
                    return
                part = rec[:n]
                part["window_index"][pads] = -1
                sent = ring.put(info.id, self._ring_generation, part) if ring is not None else None
                yield sent if sent is not None else batch_tensors(part, self._codec.schema, info is not None)
        finally:
            items.close()  # closes the shard readers now, not when the generator is collected

    def _current_plan(self) -> tuple[Plan, list[int | None], list[int | None], int, int]:
        """Plan, skips and start workers for this iteration, from the loader's control block or fresh."""
        info = get_worker_info()
        n_workers = info.num_workers if info is not None else 1
        j = info.id if info is not None else 0
        if self._control is None:
            topo = Topology(world_size=self.world_size, num_workers=n_workers if info else 0, batch_size=1,
                            interleave=self.interleave, even=self.even)
            r = resume(self.fresh_state(self.epoch, topo), self.shard_sizes, topo, self.rank, self._blocks)
            self._order_epoch = self.epoch
            return r.plan, r.skip, r.start_worker, j, n_workers
        c = self._control.tolist()
        n = len(self.shard_sizes)
        topo = self._topology
        assert topo is not None
        epoch, base = int(c[0]), c[1 : 1 + n]
        n_consumed = int(c[1 + n])
        consumed = [c[2 + n + 3 * i : 5 + n + 3 * i] for i in range(n_consumed)]
        at = 2 + n + 3 * _consumed_capacity(n, topo.n_slots)
        skip = c[at : at + topo.n_slots]
        start = c[at + topo.n_slots : -1]
        self._ring_generation = int(c[-1])
        self._order_epoch = epoch
        order = epoch_shard_order(n, self.seed, epoch, bool(self.shuffle))
        plan = Plan.build(self.shard_sizes, base, order, topo, consumed, self.shard_order == "block", self._blocks)
        return plan, skip, start, j, n_workers

    def _current_epoch(self) -> int:
        """Epoch of this iteration: the loader's control block (its first entry), else `set_epoch`'s."""
        return int(self._control[0]) if self._control is not None else self.epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.batch_stages and self._control is None:
            raise StageError("this stream has batch stages (map_batch), which StreamLoader applies to its batches: "
                             "iterate it with wdspq.StreamLoader, or apply the function to your own batches")
        plan, skip, start, j, n_workers = self._current_plan()
        N = plan.topology.workers
        if n_workers != N:
            raise StateError(f"the stream was planned for {N} workers but runs in {n_workers}")
        w = (j + int(start[self.rank] or 0)) % N
        slot = plan.topology.slot(self.rank, w)
        ctx = StageContext(self, plan, slot, int(skip[slot] or 0), self._current_epoch(),
                           plan.topology.batch_size if self._batched else None)
        yield from run_stages(self, ctx)  # wdspq.stream.pipeline: cursor, read, decode, then the user's stages


def _is_mixture_source(source: Any) -> bool:
    from ..mixture import Source

    return isinstance(source, (list, tuple, Source))


def _end_workers(it: Any, ring: BatchRing, generation: int) -> None:
    """Stop this iteration's worker processes now and free the ring blocks of batches they sent that were
    never taken (an abandoned iteration). Only once every worker has exited: nobody can be writing them."""
    try:
        it._shutdown_workers()  # torch's own shutdown (also what the iterator's __del__ does)
        if all(not w.is_alive() for w in getattr(it, "_workers", [])):
            ring.reclaim(generation)
    except Exception:  # a torch without these internals: the blocks stay claimed, later batches use fresh memory
        pass


def _consumed_capacity(n_shards: int, n_slots: int) -> int:
    """Consumed ranges the loader's control block can carry to its workers (a state has at most one per
    piece of an earlier segment, and pieces number at most shards + 2 x slots)."""
    return n_shards + 8 * n_slots + 256


def _close(it: Any) -> None:
    if it is not None and hasattr(it, "close"):
        it.close()


DEFAULT_PREFETCH = 4


class StreamLoader(DataLoader):
    """A DataLoader over a ShardStream with exact, self-checking resume (README "Streaming and resuming exactly", R1-R7).

    - `state_dict()`: a plain JSON-serialisable dict counting the batches this loader handed to the
      caller (not what workers prefetched). With torch.distributed initialised and world size > 1 it
      is a collective call: every rank must call it, and each gets the merged state of all ranks.
      Without torch.distributed each rank's state holds its own position; merge them with
      `wdspq.merge_states` to resume under another topology.
    - `load_state_dict(state)`: checks manifest, window spec, seed and shuffle (StateError naming the
      difference) and takes effect at the next `iter()` (an iterator that has not yet produced a batch
      starts from it too). Loading while an iteration is running makes that iteration raise StateError
      at its next batch (never a silent restart); so does `set_epoch` or starting another `iter()`.
      Loading twice: the last state wins.
    - `set_epoch(e)`: another epoch starts it fresh at the next `iter()`; the current epoch keeps its
      position (so a loop `for e in range(state_epoch, E): set_epoch(e)` resumes correctly). An
      `iter()` after a completed epoch without `set_epoch` moves to the next epoch; an `iter()` after
      an interrupted one continues it. The epoch reaches every worker, persistent or not.
    - `len(loader)`: the batches an `iter()` started now would yield (the rest of a resumed epoch).
    - DataLoader arguments that reorder or rebatch (`shuffle`, `sampler`, `batch_sampler`, `drop_last`,
      `in_order=False`) are refused.
    - Every rank yields the same number of batches (`even="pad"`: flagged repeats with window_index -1;
      `"drop"`: surplus dropped; `"none"`: no balancing).
    - `prefetch_factor` defaults to 4 batches per worker when the ring is used (DataLoader's own default, 2,
      otherwise: batches in fresh segments then take no more shared memory than a plain DataLoader's).
    - `shared_ring` (default True): with workers, batches travel through reusable shared-memory blocks
      (wdspq.stream.ring) instead of a fresh segment each; the batches are the same either way.
    """

    def __init__(
        self,
        stream: ShardStream,
        batch_size: int = 32,
        num_workers: int = 0,
        even: str | None = None,
        interleave: int | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        shared_ring: bool = True,
        **dataloader_kwargs: Any,
    ) -> None:
        for bad in ("shuffle", "sampler", "batch_sampler", "drop_last"):
            if dataloader_kwargs.get(bad):
                raise WdspqError(f"StreamLoader does not take {bad}=: the stream orders and batches itself")
        if not dataloader_kwargs.get("in_order", True):
            raise WdspqError("StreamLoader does not take in_order=False: the state counts batches in the plan's order")
        if batch_size is None or int(batch_size) < 1:
            raise WdspqError(f"batch_size must be >= 1, got {batch_size}")
        view = copy.copy(stream)
        topo = Topology(
            world_size=stream.world_size,
            num_workers=int(num_workers),
            batch_size=int(batch_size),
            interleave=int(interleave if interleave is not None else stream.interleave),
            even=even if even is not None else stream.even,
        )
        n = len(stream.shard_sizes)
        view._topology = topo
        # The plan of the next iteration, [epoch, base per shard, number of consumed ranges, consumed ranges
        # (shard, start, end; capacity-padded), skip per slot, start worker per rank, ring generation], written
        # by the main process before each iter() and read by every worker (persistent ones too) at __iter__.
        size = 3 + n + 3 * _consumed_capacity(n, topo.n_slots) + topo.n_slots + topo.world_size
        view._control = torch.zeros(size, dtype=torch.int64).share_memory_()
        # Default collation happens inside the stream (vectorised, in the workers); a custom collate_fn
        # gets the per-sample path with the DataLoader's own batching.
        view._batched = collate_fn is None
        workers = int(num_workers)
        ring_layout, per_worker = None, 0
        if view._batched and workers > 0 and shared_ring and not stream.user_stages:  # user stages: default_collate
            ring_layout = BatchLayout.of(stream._codec.dtype, stream._codec.schema, topo.batch_size)
            per_worker = int(dataloader_kwargs.get("prefetch_factor") or DEFAULT_PREFETCH) + 2  # a block per batch in flight
            if not BatchRing.fits(ring_layout.nbytes * per_worker * workers):
                ring_layout = None  # too big for this machine's shared memory: fresh segments, DataLoader's prefetch
        if ring_layout is not None:  # whole batches per fetch: a deeper queue smooths their uneven cost (+5 % here)
            dataloader_kwargs.setdefault("prefetch_factor", DEFAULT_PREFETCH)
        super().__init__(view, batch_size=None if view._batched else int(batch_size), num_workers=workers,
                         collate_fn=collate_fn, **dataloader_kwargs)
        self.stream = stream
        self.topology = topo
        self.rank = stream.rank
        self._epoch = 0
        self._state: CursorState = stream.fresh_state(0, topo)  # what the next iter() continues from
        self._explicit_epoch = False
        self._cursor: RankCursor | None = None
        self._generation = 0
        if ring_layout is not None:
            view._ring = BatchRing(ring_layout, workers, per_worker, self.multiprocessing_context)

    @property
    def batch_size(self) -> int | None:  # type: ignore[override]
        """Samples per batch. The stream batches in its workers, so the DataLoader underneath has none of its
        own; this reports the loader's batch size all the same (tools that read `loader.batch_size`)."""
        topo = self.__dict__.get("topology")
        return topo.batch_size if topo is not None else self.__dict__.get("_dataloader_batch_size")

    @batch_size.setter
    def batch_size(self, value: int | None) -> None:
        self.__dict__["_dataloader_batch_size"] = value

    # -- state ---------------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self._epoch

    def _local_state(self) -> CursorState:
        return self._cursor.state() if self._cursor is not None else self._state

    def state_dict(self, gather: bool = True, timeout: float | None = 300.0) -> dict[str, Any]:
        """Where this loader stands (see the class doc).

        Under torch.distributed with world size > 1, `gather=True` is a collective: every rank must call
        it at the same point and each gets the merged state (then save it on rank 0). With the gloo
        backend a rank that calls it alone fails after `timeout` seconds with a StateError that says so,
        instead of hanging. `gather=False` returns this rank's own state (not a collective); merge the
        ranks' states with `wdspq.merge_states` before an elastic resume.
        """
        st = self._local_state().to_dict()
        dist = torch.distributed
        if not gather or self.topology.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
            return self.stream._annotate_state(st)
        if timeout and dist.get_backend() == "gloo":
            from datetime import timedelta

            try:
                dist.monitored_barrier(timeout=timedelta(seconds=float(timeout)))
            except RuntimeError as e:
                raise StateError(
                    "StreamLoader.state_dict() is a collective under torch.distributed and not every rank called it "
                    f"within {timeout:g} s: call it on every rank at the same batch (then save on rank 0 only), or "
                    "call state_dict(gather=False) on each rank and combine them with wdspq.merge_states "
                    f"({' '.join(str(e).split())[:200]})"
                ) from None
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, st)
        return self.stream._annotate_state(merge_states(gathered))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` at the next iter() (see the class doc)."""
        m = self.stream.manifest
        self.stream._check_state(state)
        st = check_compatible(state, m.id, m.spec_id, self.stream.seed, bool(self.stream.shuffle), len(m.shards),
                              self.stream.shard_order)
        r = resume(st, self.stream.shard_sizes, self.topology, self.rank, self.stream._blocks)  # fail now, not at iter(), if unusable
        cap = _consumed_capacity(len(m.shards), self.topology.n_slots)
        if len(r.state.consumed) > cap:
            raise StateError(f"this state has {len(r.state.consumed)} consumed ranges, more than this loader carries "
                             f"to its workers ({cap}): resume it with more workers, or finish the epoch elsewhere")
        self._state = st
        self._epoch = st.epoch
        self._cursor = None
        self._explicit_epoch = True
        self._generation += 1

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the next iter(); the current epoch keeps its position."""
        epoch = int(epoch)
        if epoch < 0:
            raise WdspqError(f"epoch must be >= 0, got {epoch}")
        if epoch != self._epoch:
            self._state = self.stream.fresh_state(epoch, self.topology)
            self._cursor = None
            self._epoch = epoch
            self._generation += 1
        else:
            self._state = self._local_state()
            self._cursor = None
            self._generation += 1
        self._explicit_epoch = True

    # -- iteration -----------------------------------------------------------------------------------
    def _prepare(self) -> None:
        """Choose the segment the next iteration continues, publish its plan to the workers, start counting."""
        st = self._local_state()
        if st.complete and not self._explicit_epoch:
            st = self.stream.fresh_state(st.epoch + 1, self.topology)
            self._epoch = st.epoch
        self._explicit_epoch = False
        r = resume(st, self.stream.shard_sizes, self.topology, self.rank, self.stream._blocks)
        cap = _consumed_capacity(len(r.plan.base), self.topology.n_slots)
        consumed = [x for rng in r.plan.consumed for x in rng]
        c = [r.state.epoch, *r.plan.base, len(r.plan.consumed), *consumed, *[0] * (3 * cap - len(consumed)),
             *[int(x or 0) for x in r.skip], *[int(x or 0) for x in r.start_worker], self._generation]
        self.dataset._control.copy_(torch.tensor(c, dtype=torch.int64))  # type: ignore[attr-defined]
        self._state = r.state
        self._cursor = RankCursor(r.plan, self.rank, r.state)

    def __iter__(self) -> Iterator[Any]:
        """Start the next iteration now (not at its first batch): a `state_dict()` taken right after
        `iter()` at an epoch boundary already records the new epoch (field report item 2)."""
        self._generation += 1
        self._prepare()
        assert self._cursor is not None
        return self._iterate(self._generation, self._cursor)

    def _iterate(self, generation: int, cursor: RankCursor) -> Iterator[Any]:
        if self._generation != generation:
            # load_state_dict or set_epoch after iter() but before the first batch: start from that
            # state instead (the workers have not read the plan yet; documented in the class doc)
            self._generation += 1
            self._prepare()
            generation, cursor = self._generation, self._cursor  # type: ignore[assignment]
        if cursor.done:
            return
        ring: BatchRing | None = self.dataset._ring  # type: ignore[attr-defined]
        pin = bool(self.pin_memory) and torch.cuda.is_available()
        stages = self.dataset.batch_stages  # type: ignore[attr-defined]
        it = super().__iter__()
        if ring is not None and self.persistent_workers:
            ring.reclaim_others(generation)
        try:
            while True:
                # Check before fetching: with persistent workers a newer iteration shares the worker
                # iterator, and a stale fetch would steal (and lose) one of its batches.
                self._check_generation(generation)
                try:
                    batch = next(it)
                except StopIteration:
                    break
                self._check_generation(generation)
                if ring is not None and isinstance(batch, dict) and RING_KEY in batch:
                    batch = ring.take(batch, pin)
                n, wi = _batch_info(batch)  # read before the batch stages, which may drop window_index
                if stages:
                    batch = apply_batch_stages(batch, stages, n)
                cursor.record(n, wi)
                yield batch
                if cursor.done:
                    break
        finally:
            if ring is not None and not self.persistent_workers:
                _end_workers(it, ring, generation)
            del it

    def _check_generation(self, generation: int) -> None:
        if self._generation != generation:
            raise StateError(
                "the loader state changed (load_state_dict, set_epoch or a newer iter()) while this iteration "
                "was running; this iteration stops here, start a new one to continue from the new state"
            )

    def __len__(self) -> int:
        """Batches this rank still yields in the current epoch: what an iter() started now would yield
        (the whole epoch when starting fresh, the rest after a resume; during an iteration, the batches
        still to come)."""
        st = self._local_state()
        if st.complete and not self._explicit_epoch:
            st = self.stream.fresh_state(st.epoch + 1, self.topology)
        r = resume(st, self.stream.shard_sizes, self.topology, self.rank, self.stream._blocks)
        return RankCursor(r.plan, self.rank, r.state).batches_left


def _batch_info(batch: Any) -> tuple[int, np.ndarray | None]:
    """(samples in the batch, its window_index values or None) for the default collation (a dict of
    tensors), a collate_fn that keeps the list of sample dicts (`collate_fn=list`), or tensors/tuples."""
    if isinstance(batch, dict) and "window_index" in batch:
        wi = np.asarray(batch["window_index"]).reshape(-1)
        return len(wi), wi
    if isinstance(batch, (list, tuple)) and batch and all(isinstance(x, dict) for x in batch):
        if all("window_index" in x for x in batch):
            return len(batch), np.array([int(x["window_index"]) for x in batch], dtype=np.int64)
        return len(batch), None
    return _batch_len(batch), None


def _batch_len(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return len(batch)
    if isinstance(batch, dict):
        return _batch_len(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)):
        return _batch_len(batch[0])
    raise StateError("cannot count the samples of a batch from a custom collate_fn; return a dict with window_index")
