"""Weighted mixtures of exports: `Source`, the epoch's stratified schedule and the per-source pass order.

Pure functions and small readers behind `MixtureStream` (wdspq.stream.mixture; docs/mixtures.md):

* **Schedule.** An epoch is ``samples_per_epoch`` positions. Source ``j`` gets ``n_j`` of them (the
  weights apportioned by largest remainder); its ``k``-th sample of the epoch sits at the rank of the key
  ``(2k + 1) / (2 n_j)`` among all sources' keys (ties: lower source index). So at every point of the
  epoch each source's running count is within about one sample of ``share x position`` (a stratified
  schedule, not a coin per sample), and the schedule is the same every epoch.
* **Passes.** The ``k``-th sample of epoch ``e`` is sample ``K = e * n_j + k`` of the source's endless
  sequence: sample ``K mod N_j`` of pass ``K // N_j`` (``N_j``: the source's windows). A pass is the
  source read whole in the order a single-export stream of it would read epoch ``pass`` with one slot
  (shard order of that epoch, each shard in that epoch's in-shard order), so every window appears once per
  pass, a small source repeats only after all its windows were seen, and a large one is cut at the end of
  an epoch and continues in the next.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .cursor import epoch_shard_order
from .cursor.state import blocks_digest
from .epoch_order import block_layout, check_order, default_order, in_shard_order, read_in_order, shard_blocks
from .errors import ExportChangedError, WdspqError
from .shardfmt import Manifest, load_manifest
from .stream.reader import SampleReader

SOURCE_KEY = "source_index"
_SEED_TAG = 0x6D6978  # "mix": a source's order seed differs from any other use of the stream seed


@dataclass(frozen=True)
class Source:
    """One export of a mixture: its location (a shard folder, a manifest path or `s3://bucket/prefix`), its
    `weight` (> 0; weights are normalised over the mixture) and `rename` ({key in the export: key in the
    mixture}, applied to sample keys and statistics; a renamed stream's `_mask` and `_ts` keys follow it) to
    give conflicting or differently named streams one name."""

    path: str | os.PathLike
    weight: float = 1.0
    rename: Mapping[str, str] = field(default_factory=dict)
    storage_options: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        w = float(self.weight)
        if not np.isfinite(w) or w <= 0:
            raise WdspqError(f"Source {self.path}: weight must be a positive number, got {self.weight!r}")
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "path", str(self.path))
        object.__setattr__(self, "rename", dict(self.rename or {}))
        if SOURCE_KEY in self.rename.values():
            raise WdspqError(f"Source {self.path}: {SOURCE_KEY!r} is the mixture's own key; rename to another name")


def apportion(weights: Sequence[float], total: int) -> list[int]:
    """Samples per source in an epoch of `total`: ``total x weight / sum`` rounded by largest remainder
    (ties: lower index), so the counts add up to `total` and each is within one sample of its share."""
    w = np.asarray(weights, dtype=np.float64)
    exact = w / w.sum() * int(total)
    counts = np.floor(exact).astype(np.int64)
    left = int(total) - int(counts.sum())
    order = sorted(range(len(w)), key=lambda j: (-(exact[j] - counts[j]), j))
    for j in order[:left]:
        counts[j] += 1
    return [int(c) for c in counts]


def schedule(counts: Sequence[int]) -> np.ndarray:
    """The epoch's source per position (int16, length ``sum(counts)``): source ``j``'s ``k``-th sample at
    the rank of ``(2k + 1) / (2 counts[j])`` among all keys, ties by source index (module doc)."""
    keys, srcs = [], []
    for j, n in enumerate(counts):
        if n > 0:
            keys.append((2 * np.arange(n, dtype=np.float64) + 1) / (2.0 * n))
            srcs.append(np.full(n, j, dtype=np.int16))
    if not keys:
        return np.zeros(0, dtype=np.int16)
    key, src = np.concatenate(keys), np.concatenate(srcs)
    return src[np.lexsort((src, key))]


class Schedule:
    """The schedule with its per-source ranks: position -> (source, k), and a position range's k range."""

    def __init__(self, counts: Sequence[int], group: int = 1) -> None:
        """`counts` per source; with `group` > 1 they count units of `group` consecutive samples of one source."""
        self.counts = [int(c) * int(group) for c in counts]
        self.src = np.repeat(schedule(counts), int(group))
        # positions of each source's samples, in k order (the k-th entry is where sample k sits)
        self.where = [np.flatnonzero(self.src == j).astype(np.int64) for j in range(len(self.counts))]

    def __len__(self) -> int:
        return int(len(self.src))

    def at(self, g: int) -> tuple[int, int]:
        """(source, k) of global position `g`."""
        j = int(self.src[g])
        return j, int(np.searchsorted(self.where[j], g))

    def k_range(self, j: int, g0: int, g1: int) -> tuple[int, int]:
        """Source `j`'s k values among positions ``g0 .. g1-1`` (a contiguous range)."""
        w = self.where[j]
        return int(np.searchsorted(w, g0)), int(np.searchsorted(w, g1))


def source_seed(seed: int, j: int) -> int:
    """The order seed of source `j` of a mixture with stream seed `seed` (>= 0)."""
    return int(np.random.SeedSequence([_SEED_TAG, int(seed), int(j)]).generate_state(1)[0])


def pass_position(k_global: int, n_windows: int) -> tuple[int, int]:
    """(pass, offset) of the source's `k_global`-th sample (module doc)."""
    return divmod(int(k_global), int(n_windows))


class SourceReader:
    """One source of a mixture: its manifest, codec, reader and pass orders; reads a range of its samples."""

    def __init__(self, index: int, source: Source, seed: int, shuffle: bool, shard_order: str | None,
                 storage_options: Mapping[str, Any] | None, on_error: str, verify_checksums: bool) -> None:
        self.index = index
        self.source = source
        opts = dict(source.storage_options if source.storage_options is not None else (storage_options or {}))
        self.manifest: Manifest = load_manifest(source.path, opts or None)
        self.manifest.warn_old_window_rules()
        if self.manifest.num_windows <= 0:
            raise WdspqError(f"{self.manifest.url}: this export has no windows; a mixture source needs at least one")
        self.shuffle = bool(shuffle)
        self.order = check_order(shard_order or default_order(self.shuffle), self.shuffle)
        self.seed = source_seed(seed, index)
        self.codec = self.manifest.codec()
        self.reader = SampleReader(self.manifest, self.codec, on_error, verify_checksums)
        self.sizes = self.manifest.shard_sizes
        self.n = int(sum(self.sizes))
        self.blocks = shard_blocks(self.manifest)
        missing = [k for k in source.rename if k not in self.codec.schema]
        if missing:
            raise WdspqError(f"{self.manifest.url}: rename names keys this export does not have: {missing} "
                             f"(it has {list(self.codec.schema)})")
        self.rename = rename_with_companions(source.rename, self.codec.schema)
        self.schema = {}
        for k, v in self.codec.schema.items():
            m = self.rename.get(k, k)
            if m in self.schema:
                other = next(o for o in self.codec.schema if o != k and self.rename.get(o, o) == m)
                raise WdspqError(f"{self.manifest.url}: rename {source.rename} gives two keys of this export, {other!r} "
                                 f"and {k!r}, the one name {m!r}; rename to a name the export does not have")
            self.schema[m] = v
        self._passes: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._perms: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def describe(self) -> dict[str, Any]:
        """What a saved state names of this source (checked on load)."""
        return {"url": self.manifest.url, "manifest_id": self.manifest.id, "weight": self.source.weight,
                "rename": dict(sorted(self.source.rename.items())), "blocks": blocks_digest(self.blocks)}

    def pass_layout(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard order, cumulative ends in that order) of pass `p`."""
        hit = self._passes.get(p)
        if hit is None:
            order = epoch_shard_order(len(self.sizes), self.seed, p, self.shuffle)
            ends = np.cumsum(np.asarray(self.sizes, dtype=np.int64)[order])
            hit = self._passes[p] = (order, ends)
            while len(self._passes) > 4:
                self._passes.popitem(last=False)
        return hit

    def perm(self, p: int, shard: int) -> np.ndarray:
        got = self._perms.get((p, shard))
        if got is None:
            got = self._perms[p, shard] = in_shard_order(self.seed, p, shard, self.sizes[shard], self.blocks[shard], self.order)
            while len(self._perms) > 16:
                self._perms.popitem(last=False)
        return got

    def locate(self, k_global: int) -> tuple[int, int, int]:
        """(pass, shard, ordinal in that shard's order of the pass) of the `k_global`-th sample."""
        p, off = pass_position(k_global, self.n)
        order, ends = self.pass_layout(p)
        i = int(np.searchsorted(ends, off, side="right"))
        start = int(ends[i - 1]) if i else 0
        return p, int(order[i]), off - start

    def records(self, k0: int, k1: int, paced: bool = False) -> Iterator[Any]:
        """Record bytes of samples ``k0 .. k1-1`` of the source's endless sequence, in order, one ranged read
        per run of a block (R5: nothing outside the range is read).

        A shuffled block's samples are all read and decoded before its first is yielded (its order is a
        permutation of them); doing that when the block is reached makes one batch in ~15 cost as much as
        all the others together, and with several workers, whose blocks begin at other batches, the loader's
        in-order hand-over makes the others wait out each such batch. So with `paced` (in a DataLoader
        worker) the next block is decoded a few samples per sample yielded of the current one and is whole
        when it is reached; the same runs are read in the same order, only earlier (a read error of the next
        block surfaces while the current one is yielded). In one process nothing waits: blocks are decoded
        when reached."""
        return self._paced(self._jobs(int(k0), int(k1)), paced)

    def records_at(self, chunks: Iterable[np.ndarray], paced: bool = False) -> Iterator[Any]:
        """Record bytes of the samples ``K`` of the source's endless sequence given by `chunks` (arrays of
        ascending ``K``, ascending across arrays, consumed lazily), in that order: what one slot of a mixture
        reads of this source. A stretch of consecutive ``K`` is read as `records` reads it; where a slot takes
        only some samples of an ordinal block (the others are other slots' batches), that block's share is
        one job: its positions taken from one mapping of the chunks they lie in (a local shard), else read
        as runs of consecutive positions (never a sample outside the share, R5). `paced` as in `records`."""
        return self._paced(self._sparse_jobs(iter(chunks)), paced)

    def _paced(self, jobs: Iterator[Any], paced: bool) -> Iterator[Any]:
        """The records of `jobs` in order; with `paced`, a next `PacedBlock` is decoded while the current one is
        yielded (`records`)."""
        cur, nxt = next(jobs, None), next(jobs, None)
        try:
            while cur is not None:
                if isinstance(cur, PacedBlock):
                    # PACE samples of the current block, then PACE x step of the next (a batch's worth or so)
                    step = PACE * -(-nxt.n // max(1, cur.n)) if paced and isinstance(nxt, PacedBlock) else 0
                    for i, rec in enumerate(cur.ordered(), 1):
                        yield rec
                        if step and not i % PACE:
                            nxt.advance(step)
                else:
                    yield from cur
                _close_job(cur)
                cur, nxt = nxt, next(jobs, None)
        finally:
            _close_job(cur)
            _close_job(nxt)
            jobs.close()

    def _sparse_jobs(self, chunks: Iterator[np.ndarray]) -> Iterator[Any]:
        """The reads of the ascending ``K`` in `chunks` (`records_at`): `_jobs` for each stretch of consecutive
        ``K`` within a shard of a pass, one sparse `PacedBlock` per ordinal block otherwise."""
        pending = np.zeros(0, dtype=np.int64)
        done = False

        def fill(until: int) -> None:  # pull chunks until `pending` reaches K >= until, or the end
            nonlocal pending, done
            while not done and (len(pending) == 0 or pending[-1] < until):
                nxt = next(chunks, None)
                if nxt is None:
                    done = True
                elif len(nxt):
                    pending = np.concatenate([pending, np.asarray(nxt, dtype=np.int64)])

        while True:
            fill(-1)
            if len(pending) == 0:
                return
            k0 = int(pending[0])
            p, shard, q = self.locate(k0)
            first = k0 - q  # K of the shard's ordinal 0 in this pass
            c, m = block_layout(self.blocks[shard])
            block_end = first + min(self.sizes[shard], (q // (c * m) + 1) * c * m)
            fill(block_end)
            cut = int(np.searchsorted(pending, block_end))
            if int(pending[cut - 1]) - k0 == cut - 1:  # consecutive: one stretch, as far as it goes in this shard
                shard_end = first + self.sizes[shard]
                fill(shard_end)
                upto = pending[: int(np.searchsorted(pending, shard_end))]
                brk = np.flatnonzero(np.diff(upto) != 1)
                n = int(brk[0]) + 1 if len(brk) else len(upto)
                yield from self._jobs(k0, k0 + n)
                pending = pending[n:]
                continue
            phys = self.perm(p, shard)[pending[:cut] - first]
            chunks_at = np.unique(phys // c)
            needed = (chunks_at[:, None] * c + np.arange(c)).reshape(-1)
            needed = needed[needed < self.sizes[shard]]

            def run(a: int, b: int, s: int = shard) -> Iterator[Any]:
                return self.reader.run_records(s, a, b)

            yield PacedBlock(run, phys, self.reader.mapped(shard, needed))
            pending = pending[cut:]

    def _jobs(self, k: int, k1: int) -> Iterator[Any]:
        """The reads of samples ``k .. k1-1``: a `PacedBlock` per (stretch of an) ordinal block of a shuffled
        shard, or one streaming read where the order is the identity (as `read_in_order` splits them)."""
        while k < k1:
            p, shard, q = self.locate(k)
            q1 = min(self.sizes[shard], q + (k1 - k))
            perm = self.perm(p, shard)

            def run(a: int, b: int, s: int = shard) -> Iterator[Any]:
                return self.reader.run_records(s, a, b)

            part = perm[q:q1]
            if part[-1] - part[0] == q1 - q - 1 and np.array_equal(part, np.arange(part[0], part[0] + q1 - q)):
                yield read_in_order(run, perm, self.blocks[shard], q, q1)
            else:
                c, n = block_layout(self.blocks[shard])
                g = c * n
                at = q
                while at < q1:
                    e = min(q1, (at // g + 1) * g)
                    yield PacedBlock(run, perm[at:e])
                    at = e
            k += q1 - q


PACE = 16  # a next block is decoded this many current samples at a time (fewer, costlier calls than 1 by 1)


class PacedBlock:
    """The samples at a stretch (or a slot's share) of one ordinal block's ordinals (`phys`: their positions, in
    ordinal order), read as `read_in_order` reads a block (one ranged read per run of consecutive positions,
    ascending; or, given `mapped`, a local shard's `MappedSamples`, taken from its mapping), but decoded on
    demand: `advance(n)` decodes n more, `ordered()` the rest and then yields them in order. A failed mapped
    take (but an export changed under the reader) falls back to the runs, which apply the error policy."""

    def __init__(self, run: Any, phys: np.ndarray, mapped: Any = None) -> None:
        self.run, self.n, self.mapped = run, len(phys), mapped
        by_pos = np.argsort(phys, kind="stable")
        self.srt = phys[by_pos]
        self.rank = np.empty(len(phys), dtype=np.int64)
        self.rank[by_pos] = np.arange(len(phys))  # phys[t] is srt[rank[t]]
        self._run_ends = np.append(np.flatnonzero(np.diff(self.srt) != 1) + 1, len(phys))  # srt index after each run
        self.got: list[Any] = []
        self._it, self._left = None, 0

    def advance(self, n: int) -> None:
        """Read and decode up to `n` more samples (in position order)."""
        while n > 0 and len(self.got) < self.n:
            lo = len(self.got)
            if self.mapped is not None:
                hi = min(self.n, lo + n)
                try:
                    self.got.extend(self.mapped.take(self.srt[lo:hi]))
                except ExportChangedError:
                    raise  # never read on: samples of two exports would mix
                except Exception:
                    self.mapped.close()
                    self.mapped = None
                    continue
                n -= hi - lo
                continue
            if self._it is None:
                hi = int(self._run_ends[np.searchsorted(self._run_ends, lo, side="right")])
                a = int(self.srt[lo])
                self._it, self._left = self.run(a, a + hi - lo), hi - lo
            take = min(n, self._left)
            self.got.extend(itertools.islice(self._it, take))
            got = len(self.got) - lo
            n -= take
            self._left = 0 if got < take else self._left - take
            if self._left == 0:
                self._close_run()
                if got < take:
                    return  # a short read: `ordered` says so

    def ordered(self) -> Iterator[Any]:
        """Every sample, in ordinal order (the rest read first)."""
        self.advance(self.n)
        if len(self.got) != self.n:
            raise WdspqError(f"a read of {self.n} samples gave {len(self.got)}")
        got = self.got
        for j in self.rank.tolist():
            rec, got[j] = got[j], None  # held by the caller alone: one block's worth decoded at a time, not two
            yield rec

    def _close_run(self) -> None:
        if self._it is not None:
            close = getattr(self._it, "close", None)
            self._it = None
            if close is not None:
                close()

    def close(self) -> None:
        """Close the run being read and the mapping, if any."""
        self._close_run()
        if self.mapped is not None:
            self.mapped.close()
            self.mapped = None


def _close_job(job: Any) -> None:
    if job is not None:
        job.close()


COMPANIONS = ("_mask", "_ts")  # a stream's validity mask and (cameras) frame times: keys named after the stream


def rename_with_companions(rename: Mapping[str, str], schema: Mapping[str, Any]) -> dict[str, str]:
    """`rename` with each renamed stream's companion keys (``<key>_mask``, ``<key>_ts``) renamed alike unless
    named themselves: renaming a camera renames its mask and times, so its mask never vouches for zeros."""
    out = dict(rename)
    for k, v in rename.items():
        for suffix in COMPANIONS:
            if k + suffix in schema and k + suffix not in rename:
                out[k + suffix] = v + suffix
    return out


def union_schema(readers: Sequence[SourceReader]) -> dict[str, dict[str, Any]]:
    """The mixture's keys (first appearance order) -> {dtype, shape}; a key with another dtype or shape in
    two sources is an error naming both and the key, with `rename` as the fix."""
    out: dict[str, dict[str, Any]] = {}
    owner: dict[str, SourceReader] = {}
    for r in readers:
        for k, v in r.schema.items():
            if k == SOURCE_KEY:
                raise WdspqError(f"{r.manifest.url}: its key {SOURCE_KEY!r} clashes with the mixture's own key; "
                                 f"rename it (Source(..., rename={{{SOURCE_KEY!r}: 'other'}}))")
            have = out.get(k)
            if have is None:
                out[k], owner[k] = {"dtype": str(v["dtype"]), "shape": list(v["shape"])}, r
            elif (np.dtype(have["dtype"]), list(have["shape"])) != (np.dtype(v["dtype"]), list(v["shape"])):
                o = owner[k]
                raise WdspqError(
                    f"mixture key {k!r} is {have['dtype']}{tuple(have['shape'])} in source {o.index} ({o.manifest.url}) "
                    f"but {v['dtype']}{tuple(v['shape'])} in source {r.index} ({r.manifest.url}): samples of one "
                    f"stream need one dtype and shape; give one of them another name with "
                    f"Source(..., rename={{{k!r}: '...'}}) (or re-export with matching shapes)")
    out[SOURCE_KEY] = {"dtype": "int64", "shape": []}
    return out


def mixture_id(described: Sequence[Mapping[str, Any]], samples_per_epoch: int, chunk: int,
               shuffle: bool = True, order: str = "block") -> str:
    """Identity of a mixture's epoch layout and its sources' pass order (the virtual export the cursor plans
    over), so a state without its mixture entry is still refused by another mixture. The default pass order
    (shuffled, "block") is left out of the hash: ids of states saved before it was hashed stay valid."""
    d: dict[str, Any] = {"sources": [{k: d[k] for k in ("manifest_id", "weight", "rename")} for d in described],
                         "samples_per_epoch": int(samples_per_epoch), "chunk": int(chunk)}
    if (bool(shuffle), order) != (True, default_order(True)):
        d["pass_order"] = [bool(shuffle), str(order)]
    blob = json.dumps(d, sort_keys=True)
    return "mix-" + hashlib.sha256(blob.encode()).hexdigest()


def is_mixture_file(path: str) -> bool:
    """Whether `path` is a local JSON mixture file (an object with a "sources" list), not a manifest."""
    if not str(path).endswith(".json") or str(path).startswith("s3://") or not os.path.isfile(path):
        return False
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and isinstance(d.get("sources"), list)


def read_mixture_file(path: str | os.PathLike) -> tuple[list[Source], dict[str, Any]]:
    """Sources and stream options of a JSON mixture file (docs/mixtures.md "Mixture files"):
    ``{"sources": [{"path": ..., "weight": ..., "rename": {...}}, ...], "samples_per_epoch": ..., "seed": ...}``;
    relative source paths are relative to the file's folder."""
    with open(path) as f:
        try:
            d = json.load(f)
        except ValueError as e:
            raise WdspqError(f"{path}: not a JSON mixture file ({e})") from None
    if not isinstance(d, dict) or not isinstance(d.get("sources"), list) or not d["sources"]:
        raise WdspqError(f'{path}: a mixture file is a JSON object with a non-empty "sources" list')
    unknown = set(d) - {"sources", "samples_per_epoch", "seed", "shuffle"}
    if unknown:
        raise WdspqError(f"{path}: unknown mixture file fields {sorted(unknown)} (known: sources, samples_per_epoch, "
                         "seed, shuffle)")
    here = os.path.dirname(os.path.abspath(path))
    out = []
    for i, s in enumerate(d["sources"]):
        if not isinstance(s, dict) or "path" not in s:
            raise WdspqError(f'{path}: source {i} must be an object with a "path" (and "weight", "rename")')
        odd = set(s) - {"path", "weight", "rename"}
        if odd:
            raise WdspqError(f"{path}: source {i} has unknown fields {sorted(odd)} (known: path, weight, rename)")
        p = str(s["path"])
        if "://" not in p and not os.path.isabs(p):
            p = os.path.normpath(os.path.join(here, p))
        out.append(Source(p, weight=s.get("weight", 1.0), rename=s.get("rename") or {}))
    return out, {k: d[k] for k in ("samples_per_epoch", "seed", "shuffle") if k in d}
