"""`ShardStream`: the samples of one export as an IterableDataset (batched and resumed by `StreamLoader`).

The order of an epoch is a pure function of the manifest, seed, epoch and topology (wdspq.cursor): each
(rank, worker) slot reads its pieces (shards, or ranges of a shard) in the epoch's in-shard order
(wdspq.epoch_order: a block shuffle by default), interleaving `interleave` open pieces, with ranged reads at
byte offsets from the shard indexes (R5).
"""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import get_worker_info

from ..cursor import (
    PAD_INDEX,
    CursorState,
    Plan,
    Topology,
    epoch_shard_order,
    new_epoch_state,
    resume,
)
from ..cursor.plan import split_mode
from ..cursor.state import blocks_digest
from ..epoch_order import check_order, default_order, in_shard_order, read_in_order, shard_blocks
from ..errors import StateError, WdspqError
from ..shardfmt import Manifest, load_manifest
from .control import ControlBlock
from .pipeline import ShuffleFlag, StageContext, StageError, StreamPipeline, run_stages
from .reader import SampleReader
from .ring import BatchRing, batch_tensors
from .workermem import keep_freed_memory


def dist_topology(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): explicit values, else torch.distributed when initialised, else RANK/WORLD_SIZE, else (0, 1).

    Only one of the two given is an error: completing it from the environment could silently pick
    another rank's share."""
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
    Pad samples (repeats that keep ranks even, `even="pad"`) carry `window_index == -1` (`PAD_INDEX`).

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

    # The kinds of stream `ShardStream(source)` may build instead of itself: each subclass that defines
    # `accepts(source)` registers here when its module loads (MixtureStream, for a list of Sources, in
    # stream/mixture.py). `wdspq.stream` loads them with ShardStream, so this module imports none of them.
    _kinds: ClassVar[list[type[ShardStream]]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "accepts" in vars(cls):
            ShardStream._kinds.append(cls)

    def __new__(cls, source: Any = None, *args: Any, **kwargs: Any) -> ShardStream:
        """`ShardStream([Source, ...])` (a list of sources, or one `Source`) is a weighted mixture of exports
        (wdspq.stream.mixture.MixtureStream, docs/mixtures.md); a path is one export, as always."""
        if cls is ShardStream:
            for kind in ShardStream._kinds:
                if kind.accepts(source):
                    return super().__new__(kind)
            if isinstance(source, (list, tuple)):
                raise WdspqError("a list of sources is a mixture: build it with wdspq.ShardStream([...]) (this "
                                 "ShardStream came from wdspq.stream.dataset, which leaves wdspq.stream.mixture unloaded)")
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
        self._init_common(seed, interleave, even, rank, world_size)
        self._codec = self.manifest.codec()
        self._reader = SampleReader(self.manifest, self._codec, on_error, verify_checksums)
        self._blocks = shard_blocks(self.manifest)

    def _init_common(self, seed: int, interleave: int, even: str, rank: int | None, world_size: int | None) -> None:
        """The settings every kind of stream (one export, a mixture) takes alike, validated now; and the
        loader's attachments, unset until a StreamLoader makes its view (`loader_view`)."""
        self.seed = int(seed)
        if self.seed < 0:
            raise WdspqError(f"seed must be >= 0, got {seed}")
        self.interleave = int(interleave)
        self.even = even
        self.rank, self.world_size = dist_topology(rank, world_size)
        self.epoch = 0
        self._control: torch.Tensor | None = None  # a loader view's: the packed ControlBlock of the next iteration
        self._batched = False  # a loader view's: collate in the worker (default collation only)
        self._ring: BatchRing | None = None  # a loader view's: reusable shared blocks for worker batches
        self._ring_generation = 0
        self._topology: Topology | None = None  # a loader view's: the loader's topology
        self._order_epoch = 0  # epoch of the iteration being read (its in-shard orders)
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
        """The loader's saved state, with what this kind of stream adds (a mixture names its sources; the block
        order names its blocks, `blocks_digest`)."""
        if self.shard_order == "block":
            return {**state, "blocks": blocks_digest(self._blocks)}
        return state

    def _check_state(self, state: Any) -> None:
        """Raise StateError for a state this stream cannot continue, beyond `check_compatible` (mixtures, and a
        block-order state read under other blocks than it was saved with)."""
        if not isinstance(state, Mapping):
            return
        if "mixture" in state:
            raise StateError("loader state was saved for a mixture of exports, not this single export")
        if state.get("shard_order") != "block" or state.get("complete") or state.get("manifest_id") != self.manifest.id:
            return  # a finished epoch starts the next afresh; another export is `check_compatible`'s to name
        if not any(state.get("base") or ()) and not state.get("consumed") and not any(state.get("delivered") or ()):
            return  # nothing of the epoch delivered yet: it starts afresh under today's blocks
        saved, now = state.get("blocks"), blocks_digest(self._blocks)
        if saved is None and self.manifest.encoding.layout == "shared-frames":
            raise StateError(f"{self.manifest.url}: loader state was saved by an earlier wdspq, whose block order cut "
                             "shared-frames shards into other chunks (they hold whole segments since), so that state "
                             "cannot continue its epoch exactly: start the epoch afresh (loader.set_epoch)")
        if saved is not None and saved != now:
            raise StateError(f"{self.manifest.url}: loader state was saved with other in-shard blocks than this "
                             f"wdspq reads the export in (blocks {saved} in the state vs {now}), "
                             "so it cannot continue its epoch exactly: start the epoch afresh (loader.set_epoch)")

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

    # -- the loader's view ---------------------------------------------------------------------------
    def loader_view(self, topology: Topology, batched: bool) -> ShardStream:
        """The copy of this stream a StreamLoader hands to its DataLoader: its workers plan each iteration
        from a shared control block under `topology` (written by `publish`), and collate their batches
        themselves when `batched` (default collation)."""
        view = copy.copy(self)
        view._topology = topology
        size = ControlBlock.size(len(self.shard_sizes), topology.n_slots, topology.world_size)
        view._control = torch.zeros(size, dtype=torch.int64).share_memory_()
        view._batched = bool(batched)
        return view

    def publish(self, block: ControlBlock) -> None:
        """Hand the next iteration's plan to the workers (a loader view, in the main process)."""
        assert self._control is not None and self._topology is not None, "publish() is for a loader_view()"
        self._control.copy_(torch.tensor(block.pack(self._topology.n_slots), dtype=torch.int64))

    def attach_ring(self, ring: BatchRing | None) -> None:
        """Send the workers' batches through `ring` (a loader view; None: a fresh shared segment per batch)."""
        self._ring = ring

    # -- reading -------------------------------------------------------------------------------------
    def _slot_items(self, plan: Plan, slot: int, skip: int,
                    entries: Iterator[tuple[int, int, bool]] | None = None) -> Iterator[tuple[Any, bool]]:
        """(record, is_pad) of one slot from entry `skip` on, reading each shard run with one ranged read.

        A record is a sample's bytes (layout `codec.dtype`, decoded by `_decode_records`/`_collate_records`).
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
        run_at: dict[int, tuple[int, int]] = {}  # shard -> its run the last real entry came from
        try:
            for s, p, is_pad in plan.slot_sequence(slot, skip) if entries is None else entries:
                if not is_pad:
                    r = run_at.get(s)
                    if r is None or not r[0] <= p < r[1]:  # a new run of this shard: find it among the slot's
                        r = run_at[s] = next(r for r in runs[s] if r[0] <= p < r[1])
                    a, end = r
                    it = readers.get((s, a))
                    if it is None:
                        it = readers[s, a] = self._ordered(plan, s, p, end, perms)
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
                        pad_reader = self._ordered(plan, s, p, src.end, perms)
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

    def _ordered(self, plan: Plan, shard: int, q0: int, q1: int, perms: dict[int, np.ndarray]) -> Iterator[Any]:
        """Records at ordinals `q0 .. q1-1` of `shard` in this epoch's order: one ranged read per chunk, or on a
        local shard a block per call from its runs of needed samples, each opened once (`MappedSamples`)."""
        perm = perms.get(shard)
        if perm is None:
            perm = perms[shard] = in_shard_order(self.seed, self._order_epoch, shard, plan.shard_sizes[shard],
                                                 self._blocks[shard], self.shard_order)
        run = self._reader.run_records
        mapped = None
        if self.shard_order == "block" and q1 > q0 and isinstance(self._reader, SampleReader):
            mapped = self._reader.mapped(shard, np.sort(perm[q0:q1]), whole_blocks=True)
        return read_in_order(lambda a, b: run(shard, a, b), perm, self._blocks[shard], q0, q1, mapped)

    def _decode_records(self, records: Iterator[tuple[Any, bool]]) -> Iterator[dict[str, torch.Tensor]]:
        """Records `(bytes, is_pad)` as sample dicts of tensors viewing each record (pads get window_index -1).

        Tensors are made straight from the record's fields (no intermediate dict of arrays): with ~16 keys
        this per-sample work is what bounds a per-sample stream, so it is kept to one dict."""
        record_array, keys, from_numpy = self._codec.record_array, list(self._codec.schema), torch.from_numpy
        dtype, ndarray = self._codec.dtype, np.ndarray
        for record, is_pad in records:
            if type(record) is memoryview and not record.readonly:  # a writable view (a mapping's): view it as is
                rec = ndarray((), dtype, record)
            else:
                rec = record_array(record)
            t = {k: from_numpy(rec[k]) for k in keys}
            if is_pad:
                t["window_index"] = torch.tensor(PAD_INDEX, dtype=torch.int64)
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
                part["window_index"][pads] = PAD_INDEX
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
        topo = self._topology
        assert topo is not None
        n = len(self.shard_sizes)
        block = ControlBlock.unpack(self._control.tolist(), n, topo.n_slots)
        self._ring_generation = block.generation
        self._order_epoch = block.epoch
        order = epoch_shard_order(n, self.seed, block.epoch, bool(self.shuffle))
        plan = Plan(self.shard_sizes, block.base, order, topo, block.consumed, split_mode(self.shard_order),
                    self._blocks)
        return plan, block.skip, block.start_worker, j, n_workers

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.batch_stages and self._control is None:
            raise StageError("this stream has batch stages (map_batch), which StreamLoader applies to its batches: "
                             "iterate it with wdspq.StreamLoader, or apply the function to your own batches")
        if get_worker_info() is not None:
            keep_freed_memory()  # a worker's decode buffers stay mapped between blocks (stream/workermem.py)
        plan, skip, start, j, n_workers = self._current_plan()
        N = plan.topology.workers
        if n_workers != N:
            raise StateError(f"the stream was planned for {N} workers but runs in {n_workers}")
        w = (j + int(start[self.rank] or 0)) % N
        slot = plan.topology.slot(self.rank, w)
        ctx = StageContext(self, plan, slot, int(skip[slot] or 0), self._order_epoch,
                           plan.topology.batch_size if self._batched else None)
        yield from run_stages(self, ctx)  # wdspq.stream.pipeline: cursor, read, decode, then the user's stages


def _close(it: Any) -> None:
    if it is not None and hasattr(it, "close"):
        it.close()
