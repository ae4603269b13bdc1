"""`ShardStream([Source, ...])`: one resumable stream over a weighted mixture of exports (docs/mixtures.md).

The epoch's ``samples_per_epoch`` positions (wdspq.mixture: the stratified schedule) are one virtual
shard that the shard cursor plans over: cut into batches dealt to (rank, worker) slots in the order the
loaders deliver them (the plan order "batches"), so the delivered stream of all ranks and workers together
is the schedule's order for any topology, and each source's passes arrive whole, one after the other.
The state, R3 (exact resume) and R4 (elastic resume: what is left is dealt again) are the single-export
cursor's; the state adds one entry naming every source (manifest, weight, rename) that is checked on
load (R7). Each slot reads its samples of a source with one reader over the source's pass order, one
ranged read (or one mapping) per block and run (R5).
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from ..cursor import PAD_INDEX, Plan
from ..cursor.state import BATCHES
from ..errors import StateError, WdspqError
from ..mixture import (
    SOURCE_KEY,
    Schedule,
    Source,
    SourceReader,
    apportion,
    mixture_id,
    union_schema,
)
from .dataset import ShardStream, _close
from .ring import batch_tensors

MIXTURE_STATE_KEY = "mixture"


@dataclass
class VirtualManifest:
    """The mixture's epoch seen as one export of chunks: what the cursor and the loader read of a manifest."""

    id: str
    spec_id: str
    sizes: list[int]
    url: str

    @property
    def shards(self) -> list[dict[str, Any]]:
        return [{"samples": n} for n in self.sizes]

    @property
    def shard_sizes(self) -> list[int]:
        return list(self.sizes)

    @property
    def num_windows(self) -> int:
        return int(sum(self.sizes))


@dataclass
class UnionLayout:
    """The record layout of a mixture's batches (the union of keys): `dtype` and `schema`, as a codec has."""

    dtype: np.dtype
    schema: dict[str, dict[str, Any]]


def union_dtype(first: SourceReader, schema: Mapping[str, Mapping[str, Any]]) -> np.dtype:
    """The union's record dtype: the first source's record layout (keys renamed, same offsets), then the
    other keys packed after it; so sources laid out like the first copy their records as one block."""
    own = first.codec.dtype
    names, formats, offsets = [], [], []
    for k in own.names or ():
        dt, off = own.fields[k][:2]
        names.append(first.rename.get(k, k))
        formats.append(dt)
        offsets.append(off)
    end = own.itemsize
    for k, v in schema.items():
        if k not in names:
            dt = np.dtype((np.dtype(v["dtype"]), tuple(v["shape"])))
            names.append(k)
            formats.append(dt)
            offsets.append(end)
            end += dt.itemsize
    # the schema's key order for the batch dicts comes from `schema`, not from the dtype
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": end})


def as_sources(sources: Any) -> list[Source]:
    """A list of `Source` from Sources, paths (weight 1) or (path, weight) pairs."""
    out = []
    for s in sources:
        if isinstance(s, Source):
            out.append(s)
        elif isinstance(s, (str, os.PathLike)):
            out.append(Source(s))
        elif isinstance(s, (tuple, list)) and len(s) == 2:
            out.append(Source(s[0], weight=s[1]))
        else:
            raise WdspqError(f"a mixture source must be a wdspq.Source, a path or (path, weight), got {s!r}")
    if not out:
        raise WdspqError("a mixture needs at least one Source")
    return out


class MixtureStream(ShardStream):
    """A `ShardStream` over several exports with weights (build it as `wdspq.ShardStream([Source, ...])`).

    Every sample carries `source_index` (int64, the source's place in the list) and the union of the
    sources' keys (after `rename`); a key a source lacks is zeros (its `<key>_mask`, when the mixture has
    one, is false). `samples_per_epoch` defaults to the sum of the sources' windows. `shuffle`,
    `shard_order` and `seed` choose each source's pass order (the order a single-export stream reads
    epoch `pass`); `window_index` is the window's index in its own export. `stats()` is per source.
    """

    @classmethod
    def accepts(cls, source: Any) -> bool:
        """`ShardStream(source)` builds a MixtureStream for a list of sources or one `Source`."""
        return isinstance(source, (list, tuple, Source))

    def __init__(
        self,
        sources: Sequence[Source | str | os.PathLike | tuple[Any, float]],
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
        source_batches: int | None = None,
    ) -> None:
        super(ShardStream, self).__init__()  # the pipeline's stages; not ShardStream's single-export setup
        self.sources = as_sources(sources if isinstance(sources, (list, tuple)) else [sources])
        self._init_common(seed, 1, even, rank, world_size)  # batches are read one at a time: no interleave
        self.source_shuffle = bool(shuffle)
        self.readers = [SourceReader(j, s, self.seed, shuffle, shard_order, storage_options, on_error, verify_checksums)
                        for j, s in enumerate(self.sources)]
        self.schema = union_schema(self.readers)
        total = sum(r.n for r in self.readers)
        self.samples_per_epoch = int(samples_per_epoch if samples_per_epoch is not None else total)
        if self.samples_per_epoch < 1:
            raise WdspqError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        self.group = int(source_batches) if source_batches else None
        if self.group is None:
            self.counts = apportion([s.weight for s in self.sources], self.samples_per_epoch)
            self.sched = Schedule(self.counts)
        else:
            # one-source batches: the schedule places units of `group` samples of one source; batches of `group`
            # dealt in order are then the units (the loader's batch size must be `group`)
            if self.group < 1 or self.samples_per_epoch % self.group:
                raise WdspqError(f"source_batches={source_batches}: samples_per_epoch ({self.samples_per_epoch}) must "
                                 "be a positive multiple of it")
            units = apportion([s.weight for s in self.sources], self.samples_per_epoch // self.group)
            self.counts = [u * self.group for u in units]
            self.sched = Schedule(units, self.group)
        described = [r.describe() for r in self.readers]
        spec = hashlib.sha256("|".join(r.manifest.spec_id for r in self.readers).encode()).hexdigest()[:16]
        # one virtual shard, the epoch (its size is the id's chunk, as when chunks could be smaller)
        self.manifest = VirtualManifest(mixture_id(described, self.samples_per_epoch, self.samples_per_epoch,
                                                   self.source_shuffle, self.readers[0].order), spec,
                                        [self.samples_per_epoch],
                                        "mixture(" + ", ".join(r.manifest.url for r in self.readers) + ")")
        self.source = self.manifest.url
        # The cursor plans over the epoch as one virtual shard whose batches are dealt in delivery order (its
        # "batches" plan order; nothing is permuted: positions are the schedule's); the sources' orders shuffle.
        self.shuffle = self.group is None
        self.shard_order = BATCHES
        # the union's record layout: what worker collation fills and the loader's shared ring carries
        self._codec = UnionLayout(union_dtype(self.readers[0], self.schema), self.schema)
        self._reader = None
        self._blocks = [1] * len(self.manifest.sizes)
        self._keymaps = [self._keymap(r) for r in self.readers]
        self._direct = [self._prefix_size(r) for r in self.readers]

    # -- identity ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Samples in one epoch of the mixture (all ranks together, pads excluded)."""
        return self.samples_per_epoch

    def describe(self) -> dict[str, Any]:
        """What a saved state names of this mixture: every source (url, manifest id, weight, rename), the
        epoch length and the source order (checked by `check_state`)."""
        return {"sources": [r.describe() for r in self.readers], "samples_per_epoch": self.samples_per_epoch,
                "shuffle": self.source_shuffle, "shard_order": self.readers[0].order, "source_batches": self.group}

    def passes_per_epoch(self) -> list[float]:
        """Passes over each source per epoch (its samples in the epoch / its windows)."""
        return [c / r.n for c, r in zip(self.counts, self.readers)]

    def stats(self) -> list[dict[str, dict[str, torch.Tensor]]]:  # type: ignore[override]
        """Per source (index = `source_index`): its export's statistics, keys renamed. Pass the list to
        `wdspq.Normalize`, which then normalises each sample by its own source's statistics."""
        from ..normalize import stats_tensors

        out = []
        for r in self.readers:
            if "stats" not in r.manifest.data:
                raise WdspqError(f"{r.manifest.url}: this export records no statistics")
            st = stats_tensors(r.manifest.data["stats"])
            out.append({r.rename.get(k, k): v for k, v in st.items()})
        return out

    def in_shard_order(self, shard: int, epoch: int) -> np.ndarray:
        return np.arange(self.manifest.sizes[shard], dtype=np.int64)

    # -- state ---------------------------------------------------------------------------------------
    def _annotate_state(self, state: dict[str, Any]) -> dict[str, Any]:
        return {**state, MIXTURE_STATE_KEY: self.describe()}

    def _check_state(self, state: Mapping[str, Any]) -> None:
        """StateError naming every difference between a saved mixture (the state's entry) and this one."""
        if not isinstance(state, Mapping):
            return
        old_plan = state.get("shard_order")
        if str(state.get("manifest_id")).startswith("mix-") and old_plan != BATCHES:
            how = {"block": "into uneven pieces per worker", "contiguous": "into one stretch per worker",
                   "sequential": "into units read as shards"}.get(str(old_plan), f"by the plan {old_plan!r}")
            raise StateError(f"loader state was saved by an earlier wdspq, which cut a mixture's epoch {how}; this one "
                             "deals the epoch's batches in delivery order, so that state cannot continue its epoch "
                             "exactly: start the epoch afresh (loader.set_epoch)")
        saved = state.get(MIXTURE_STATE_KEY)
        if saved is None:
            if state.get("manifest_id") != self.manifest.id:
                what = "a single export" if not str(state.get("manifest_id", "")).startswith("mix-") else "another mixture"
                raise StateError(f"loader state was saved for {what}, not this mixture of {len(self.readers)} sources")
            return
        problems = []
        old, new = saved.get("sources", []), self.describe()["sources"]
        if len(old) != len(new):
            problems.append(f"the state's mixture has {len(old)} sources, this one {len(new)}")
        for j, (a, b) in enumerate(zip(old, new)):
            for k in ("manifest_id", "weight", "rename", "blocks"):
                if k == "blocks" and "blocks" not in a:
                    continue  # named since the block rule of shared-frames shards changed; older states lack it
                if a.get(k) != b.get(k):
                    va, vb = a.get(k), b.get(k)
                    if k == "manifest_id":
                        va, vb = str(va)[:12], str(vb)[:12]
                    problems.append(f"source {j} ({b['url']}): {k} {va!r} in the state vs {vb!r} in this stream")
        for k in ("samples_per_epoch", "shuffle", "shard_order", "source_batches"):
            if saved.get(k) != self.describe()[k]:
                problems.append(f"{k} {saved.get(k)!r} in the state vs {self.describe()[k]!r} in this stream")
        if problems:
            raise StateError("loader state does not match this mixture: " + "; ".join(problems)
                             + " (a changed mixture cannot continue an epoch: start a fresh state)")

    # -- reading -------------------------------------------------------------------------------------
    def _keymap(self, r: SourceReader) -> list[tuple[str, str | None, np.dtype, tuple[int, ...]]]:
        """(mixture key, key in the source's records or None, dtype, shape) for every key of the union."""
        back = {r.rename.get(k, k): k for k in r.codec.schema}
        return [(k, back.get(k), np.dtype(v["dtype"]), tuple(v["shape"])) for k, v in self.schema.items()
                if k != SOURCE_KEY]

    def _prefix_size(self, r: SourceReader) -> int:
        """The source's record size when its record layout is a prefix of the union's (same keys after
        rename, in the same order, same dtypes, shapes and offsets, no other key inside it), else 0."""
        union, own = self._codec.dtype, r.codec.dtype
        names, unames = list(own.names or ()), list(union.names or ())
        mapped = [r.rename.get(k, k) for k in names]
        if unames[: len(mapped)] != mapped:
            return 0
        for k, m in zip(names, mapped):
            (dt_a, off_a), (dt_b, off_b) = own.fields[k][:2], union.fields[m][:2]
            if dt_a != dt_b or off_a != off_b:
                return 0
        if any(union.fields[m][1] < own.itemsize for m in unames[len(mapped):]):
            return 0
        return int(own.itemsize)

    def _slot_items(self, plan: Plan, slot: int, skip: int,
                    entries: Iterator[tuple[int, int, bool]] | None = None) -> Iterator[tuple[Any, bool]]:
        """((source, record), is_pad) of one slot from entry `skip` on.

        The slot's positions are known from the plan, so each source gets one reader over the slot's samples
        of it (ascending in the source's sequence; `SourceReader.records_at`), fed lazily from the plan."""
        sched, epoch = self.sched, self._order_epoch
        if self.group is not None and self._control is not None:
            topo = plan.topology
            if topo.batch_size != self.group:
                raise WdspqError(f"this mixture makes one-source batches of {self.group} (source_batches): its loader "
                                 f"needs batch_size={self.group}, not {topo.batch_size}")
        src_of = sched.src
        readers: dict[int, Iterator[Any]] = {}
        paced = get_worker_info() is not None  # workers hand batches over in turn: no batch may carry a block's decode
        try:
            for _, p, is_pad in plan.slot_sequence(slot, skip) if entries is None else entries:
                j = int(src_of[p])
                r = self.readers[j]
                if is_pad:
                    K = epoch * self.counts[j] + sched.at(p)[1]
                    it = r.records(K, K + 1)
                    rec = next(it, None)
                    _close(it)
                else:
                    it = readers.get(j)
                    if it is None:
                        it = readers[j] = r.records_at(self._slot_ks(plan, slot, skip, j), paced)
                    rec = next(it, None)
                if rec is None:
                    raise WdspqError(f"{r.manifest.url}: a sample of the mixture's source {j} (epoch {epoch}, "
                                     f"position {p}) is missing")
                yield (j, rec), is_pad
        finally:
            for it in readers.values():
                _close(it)
            for r in self.readers:
                r.reader.end_iteration()

    def _slot_ks(self, plan: Plan, slot: int, skip: int, j: int) -> Iterator[np.ndarray]:
        """Source `j`'s samples ``K`` (its sequence) among the slot's real entries from `skip` on, ascending,
        in arrays (a slot's positions ascend, and so do one source's ranks in the schedule)."""
        kept = plan.slot_real_count(slot)
        first = min(int(skip), kept)
        where, src_of, base = self.sched.where[j], self.sched.src, self._order_epoch * self.counts[j]
        for _, pos, _ in plan.slot_chunks(slot, first, kept - first):
            mine = pos[src_of[pos] == j]
            if len(mine):
                yield base + np.searchsorted(where, mine)

    def _decode_records(self, records: Iterator[tuple[Any, bool]]) -> Iterator[dict[str, torch.Tensor]]:
        """`((source, record), is_pad)` as sample dicts over the union of keys, with `source_index`."""
        codecs = [r.codec for r in self.readers]
        from_numpy = torch.from_numpy
        for (j, record), is_pad in records:
            rec = codecs[j].record_array(record)
            t: dict[str, torch.Tensor] = {}
            for k, orig, dtype, shape in self._keymaps[j]:
                t[k] = from_numpy(rec[orig]) if orig is not None else torch.from_numpy(np.zeros(shape, dtype=dtype))
            t[SOURCE_KEY] = torch.tensor(j, dtype=torch.int64)
            if is_pad:
                t["window_index"] = torch.tensor(PAD_INDEX, dtype=torch.int64)
            yield t

    def _collate_records(self, items: Iterator[tuple[Any, bool]], batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """`((source, record), is_pad)` collated in the worker, `batch_size` at a time: equal to default
        collation of `_decode_records`, but into one record array of the union's layout (missing keys zero):
        a record laid out like the union's prefix is one copy into its row, as a single export's is, others
        go key by key; handed over like a single export's batch (the loader's shared ring, or one shared
        block per batch)."""
        dtypes = [r.codec.dtype for r in self.readers]
        union, schema = self._codec.dtype, self._codec.schema
        info = get_worker_info()
        ring = self._ring if info is not None else None
        buf = np.zeros(batch_size, dtype=union)  # reused: its pages are faulted in once per iteration
        all_rows = buf.view(np.uint8).reshape(batch_size, union.itemsize)
        direct = self._direct
        # bytes past the shortest record copied whole: zeroed per batch (keys a source lacks, `source_index`)
        tail = min([d for d in direct if d] or [0])
        src = np.empty(batch_size, dtype=np.int64)
        try:
            while True:
                if tail < union.itemsize:
                    all_rows[:, tail:] = 0  # before the copies: a longer prefix overwrites its part of it
                n, pads, other = 0, [], []
                for (j, record), is_pad in itertools.islice(items, batch_size):
                    size = direct[j]
                    if size:  # the source's records are a prefix of the union's layout: one copy per record
                        all_rows[n, :size] = np.frombuffer(record, dtype=np.uint8)
                    else:
                        other.append((n, j, record))
                    src[n] = j
                    if is_pad:
                        pads.append(n)
                    n += 1
                if n == 0:
                    return
                out = buf[:n]
                if other:
                    self._fill_other(out, all_rows, other, dtypes)
                out[SOURCE_KEY] = src[:n]
                if pads:
                    out["window_index"][pads] = PAD_INDEX
                sent = ring.put(info.id, self._ring_generation, out) if ring is not None else None
                yield sent if sent is not None else batch_tensors(out, schema, info is not None)
        finally:
            items.close()  # type: ignore[attr-defined]

    def _fill_other(self, out: np.ndarray, rows: np.ndarray, other: list[tuple[int, int, Any]],
                    dtypes: list[np.dtype]) -> None:
        """Rows of sources laid out otherwise than the union: zeroed, then filled key by key, per source."""
        by_source: dict[int, list[tuple[int, Any]]] = {}
        for i, j, record in other:
            by_source.setdefault(j, []).append((i, record))
        for j, got in by_source.items():
            where = np.fromiter((i for i, _ in got), dtype=np.int64, count=len(got))
            rows[where] = 0
            recs = np.empty(len(got), dtype=dtypes[j])
            own = recs.view(np.uint8).reshape(len(got), dtypes[j].itemsize)
            for r, (_, record) in enumerate(got):
                own[r] = np.frombuffer(record, dtype=np.uint8)
            for k, orig, _, _ in self._keymaps[j]:
                if orig is not None:
                    out[k][where] = recs[orig]
