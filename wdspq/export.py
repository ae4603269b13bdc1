"""Export the table into pre-windowed WebDataset shards with a manifest (README "Shards").

Two phases, both byte-deterministic whatever the number of worker processes:

1. *spill*: episodes are cut into windows in fixed chunks of `EPISODES_PER_CHUNK` episodes (the
   chunking does not depend on `workers`); each chunk's encoded samples go to one local spill file
   with an index and its statistics, written atomically, so an interrupted export resumes per chunk.
   Windows are streamed one at a time: memory is bounded by one decoded episode per worker (the
   dataset's LRU), never by the number of windows.
2. *assemble*: each shard's windows (a seeded permutation of all windows, cut into consecutive runs of
   `samples_per_shard`) are read back from the spills and written with `webdataset.TarWriter` (fixed
   mtime/owner/mode, one member per sample) to a staging file, then committed under the final name
   through the storage layer (a rename locally, an upload on S3). After each commit one line is
   appended to a local journal in the spill folder; a re-run reuses journalled shards whose size and
   sha256 still match and rewrites the rest.

The manifest (per-sample byte offsets, normalisation statistics, the export configuration) is written
last, then the spill folder is removed. Held in memory beyond one episode: a few int64 arrays of
length `num_windows` (the permutation and each window's spill location) and the manifest's offsets.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from tqdm import tqdm

from ._version import __version__
from .codec import MEMBER, SampleCodec, key_of
from .errors import ShardError, WdspqError
from .manifest import MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION
from .schema import read_meta
from .storage import Storage, open_storage
from .table_dataset import ParquetWindowDataset
from .windows import WindowSpec

JOURNAL_NAME = "journal.jsonl"  # inside the spill folder (local), one line per committed shard
SPILL_PREFIX = ".wdspq-spill-"
EPISODES_PER_CHUNK = 8
_OPEN_SPILLS = 64  # spill files a shard writer keeps open at once
_STATS_FLUSH_ROWS = 1 << 16
_SHARD_RE = re.compile(r"^shard-\d{6}\.tar$")


def shard_name(i: int) -> str:
    return f"shard-{i:06d}.tar"


# ---------------------------------------------------------------------------------------------------
# statistics


@dataclass
class _Stats:
    """Per-feature count, mean, M2 (sum of squared deviations), min and max over real rows.

    Batches are merged with Chan's parallel update (numerically stable, unlike sum of squares); the
    chunks are merged in chunk order, so the result does not depend on the worker count.
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> _Stats:
        z = np.zeros(dim, np.float64)
        return cls(0, z, z.copy(), np.full(dim, np.inf), np.full(dim, -np.inf))

    def add(self, rows: np.ndarray) -> None:
        if len(rows):
            r = np.asarray(rows, dtype=np.float64)
            mean = r.mean(0)
            self._merge(len(r), mean, ((r - mean) ** 2).sum(0), r.min(0), r.max(0))

    def merge(self, other: _Stats) -> None:
        if other.count:
            self._merge(other.count, other.mean, other.m2, other.lo, other.hi)

    def _merge(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta * delta * (n_a * n_b / n)
        self.count = n
        self.lo = np.minimum(self.lo, lo)
        self.hi = np.maximum(self.hi, hi)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.{k}": np.asarray(getattr(self, k)) for k in ("count", "mean", "m2", "lo", "hi")}

    @classmethod
    def from_arrays(cls, d: Any, prefix: str) -> _Stats:
        return cls(int(d[f"{prefix}.count"]), *(np.asarray(d[f"{prefix}.{k}"]) for k in ("mean", "m2", "lo", "hi")))

    def to_dict(self) -> dict[str, Any]:
        """Population statistics (ddof=0) over every real row of every window (rows repeat across windows)."""
        n = self.count
        return {
            "count": n,
            "mean": self.mean.tolist() if n else [],
            "std": np.sqrt(np.maximum(self.m2 / max(n, 1), 0.0)).tolist() if n else [],
            "min": self.lo.tolist() if n else [],
            "max": self.hi.tolist() if n else [],
        }


# ---------------------------------------------------------------------------------------------------
# worker processes: state is installed once per process by the pool initializer

_W: dict[str, Any] = {}


def _init_worker(state: dict[str, Any]) -> None:
    _W.clear()
    _W.update(state)


def _check_parent() -> None:
    """A worker whose export process died (e.g. SIGKILL) stops instead of writing on as an orphan."""
    parent = _W.get("parent")
    if parent is not None and os.getppid() != parent:
        os._exit(1)


class _Workers:
    """Runs jobs in this process (`workers == 1`) or in a process pool, yielding results as they finish.

    At most `2 * workers` jobs are in flight, so job arguments are produced lazily (bounded memory).
    """

    def __init__(self, workers: int, state: dict[str, Any]) -> None:
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None
        if workers > 1:
            self.pool = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=({**state, "parent": os.getpid()},))
        else:
            _init_worker({**state, "parent": None})

    def run(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Iterator[Any]:
        if self.pool is None:
            yield from map(fn, jobs)
            return
        it = iter(jobs)
        running: set[Future] = set()
        for job in it:
            running.add(self.pool.submit(fn, job))
            if len(running) >= 2 * self.workers:
                break
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                yield fut.result()
                nxt = next(it, None)
                if nxt is not None:
                    running.add(self.pool.submit(fn, nxt))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        _W.clear()


# ---------------------------------------------------------------------------------------------------
# phase 1: spill


def _chunk_paths(spill_root: str | Path, chunk: int) -> tuple[Path, Path, Path]:
    base = Path(spill_root) / f"chunk-{chunk:06d}"
    return base.with_suffix(".bin"), base.with_suffix(".idx.npy"), base.with_suffix(".stats.npz")


def _features(ds: ParquetWindowDataset) -> dict[str, int]:
    """The numeric streams that get normalisation statistics: actions and every signal stream (name -> width)."""
    return {"actions": ds.meta.actions.width, **{s.name: s.width for s in ds.meta.signals}}


def _load_chunk(chunk: int, spill_root: str, features: Iterable[str]) -> dict[str, Any] | None:
    """A chunk spilled by an earlier run, or None when it is missing or damaged (then it is redone)."""
    data, idx, st = _chunk_paths(spill_root, chunk)
    try:
        index = np.load(idx)
        with np.load(st) as d:
            stats = {f: _Stats.from_arrays(d, f) for f in features}
        size = data.stat().st_size
    except (OSError, ValueError, KeyError, EOFError):
        return None
    if index.ndim != 2 or index.shape[1] != 3 or (len(index) and int(index[-1, 1] + index[-1, 2]) != size):
        return None
    return {"chunk": chunk, "index": index, "stats": stats}


def _spill_chunk(job: tuple[int, int, int]) -> dict[str, Any]:
    """Phase 1 job: cut every window of episodes [e0, e1) and write the encoded samples to one spill file."""
    _check_parent()
    chunk, e0, e1 = job
    ds: ParquetWindowDataset = _W["ds"]
    spill_root: str = _W["spill_root"]
    features = _features(ds)
    done = _load_chunk(chunk, spill_root, features)
    if done is not None:
        return done
    codec = SampleCodec(ds.sample_schema())
    data_path, idx_path, stats_path = _chunk_paths(spill_root, chunk)
    suffix = f".tmp-{os.getpid()}"
    tmp_data = data_path.with_name(data_path.name + suffix)
    tmp_idx = idx_path.with_name(idx_path.name + suffix)
    tmp_stats = stats_path.with_name(stats_path.name + suffix)
    rows: list[tuple[int, int, int]] = []
    stats = {f: _Stats.empty(dim) for f, dim in features.items()}
    pending: dict[str, list[np.ndarray]] = {f: [] for f in features}
    n_pending = 0
    with open(tmp_data, "wb") as f:
        for ep in range(e0, e1):
            where = f"{ds.path}: episode {ds.episode_ids[ep]!r} (row {ep})"
            it = ds.episode_windows(ep)
            while True:
                try:
                    s = next(it, None)
                except WdspqError:
                    raise
                except Exception as e:  # a decoder or Arrow failure: name the episode
                    raise ShardError(f"{where} could not be windowed: {type(e).__name__}: {e}") from e
                if s is None:
                    break
                for feat in features:
                    real = s[feat][s[f"{feat}_mask"]]
                    pending[feat].append(real)
                    n_pending += len(real)
                if n_pending >= _STATS_FLUSH_ROWS:
                    for feat in features:
                        stats[feat].add(np.concatenate(pending[feat]))
                        pending[feat].clear()
                    n_pending = 0
                payload = codec.encode(s)[MEMBER]
                rows.append((int(s["window_index"]), f.tell(), len(payload)))
                f.write(payload)
        for feat in features:
            if pending[feat]:
                stats[feat].add(np.concatenate(pending[feat]))
        f.flush()
        os.fsync(f.fileno())
    index = np.array(rows, dtype=np.int64).reshape(-1, 3)
    with open(tmp_idx, "wb") as f:
        np.save(f, index)
    with open(tmp_stats, "wb") as f:
        np.savez(f, **{k: v for feat in features for k, v in stats[feat].arrays(feat).items()})
    os.replace(tmp_data, data_path)
    os.replace(tmp_idx, idx_path)
    os.replace(tmp_stats, stats_path)  # last: its presence marks the chunk complete
    return {"chunk": chunk, "index": index, "stats": stats}


# ---------------------------------------------------------------------------------------------------
# phase 2: assemble


class _HashingWriter(io.RawIOBase):
    """A write-only file object that hashes and counts what passes through to `raw`."""

    def __init__(self, raw: Any, h: Any) -> None:
        self.raw, self.h, self.count = raw, h, 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.h.update(b)
        n = self.raw.write(b)
        self.count += len(b)
        return n if n is not None else len(b)


def _assemble_shard(job: tuple[int, np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Phase 2 job: write one shard from spilled samples in its final order; return its manifest entry."""
    _check_parent()
    number, windows, locations = job
    storage: Storage = _W["storage"]
    spill_root: str = _W["spill_root"]
    name = shard_name(number)
    staging = storage.staging_path(name)
    offsets: list[int] = []
    h = hashlib.sha256()
    files: OrderedDict[int, Any] = OrderedDict()
    try:
        with open(staging, "wb") as raw:
            hashing = _HashingWriter(raw, h)
            with wds.TarWriter(hashing, user="wdspq", group="wdspq", mode=0o444, mtime=0) as tw:
                for w, (chunk, off, length) in zip(windows.tolist(), locations.tolist()):
                    fd = files.get(chunk)
                    if fd is None:
                        if len(files) >= _OPEN_SPILLS:
                            files.popitem(last=False)[1].close()
                        fd = files[chunk] = open(_chunk_paths(spill_root, chunk)[0], "rb")
                    else:
                        files.move_to_end(chunk)
                    fd.seek(off)
                    payload = fd.read(length)
                    if len(payload) != length:
                        raise ShardError(f"{fd.name}: spill file is truncated (window {w}); delete it and re-run")
                    offsets.append(tw.tarstream.offset)
                    tw.write({"__key__": key_of(w), MEMBER: payload})
                offsets.append(tw.tarstream.offset)
            raw.flush()
            os.fsync(raw.fileno())
            size = hashing.count
        storage.commit(staging, name)
    except BaseException:
        storage.discard(staging)
        raise
    finally:
        for fd in files.values():
            fd.close()
    return {
        "name": name,
        "samples": len(windows),
        "bytes": size,
        "sha256": h.hexdigest(),
        "offsets": offsets,
        "first_window": int(windows[0]) if len(windows) else None,
    }


def shard_assignment(n_windows: int, samples_per_shard: int, seed: int, shuffle: bool) -> list[np.ndarray]:
    """Window indices of each shard in write order: a seeded permutation cut into consecutive runs."""
    order = np.random.default_rng(seed).permutation(n_windows) if shuffle else np.arange(n_windows, dtype=np.int64)
    return [order[i : i + samples_per_shard] for i in range(0, n_windows, samples_per_shard)]


# ---------------------------------------------------------------------------------------------------
# configuration, journal, existing exports


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise WdspqError(f"export: {name} must be an integer >= {lo}, got {value!r}")
    if value < lo:
        raise WdspqError(f"export: {name} must be >= {lo}, got {value}")
    return int(value)


def _config_digest(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _table_fingerprint(path: str) -> dict[str, Any]:
    """Cheap identity of the table file: size and a hash of its tail (the footer holds row-group stats)."""
    st = os.stat(path)
    with open(path, "rb") as f:
        f.seek(max(0, st.st_size - 65536))
        tail = f.read()
    return {"bytes": st.st_size, "tail_sha256": hashlib.sha256(tail).hexdigest()}


def _default_spill_dir(out: str, digest: str) -> Path:
    """Local scratch for phase 1: inside a local output (same disk, hidden, never a `.tar`), else the temp dir.

    Stable per configuration, so a re-run after an interruption finds it.
    """
    if out.startswith("s3://"):
        return Path(tempfile.gettempdir()) / f"wdspq-spill-{digest}"
    return Path(out) / f"{SPILL_PREFIX}{digest}"


def _read_journal(path: Path, digest: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill: that shard is simply redone
        if isinstance(rec, dict) and rec.get("config") == digest and isinstance(rec.get("entry"), dict):
            out[rec["entry"]["name"]] = rec["entry"]
    return out


class _Journal:
    """Append-only local journal: one fsync'd line per committed shard (O(1) per shard, any storage)."""

    def __init__(self, path: Path, digest: str) -> None:
        self.digest = digest
        self.f = open(path, "a", encoding="utf-8")

    def append(self, entry: dict[str, Any]) -> None:
        self.f.write(json.dumps({"config": self.digest, "entry": entry}, sort_keys=True) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def _shard_intact(storage: Storage, entry: dict[str, Any]) -> bool:
    """Whether the shard under `entry['name']` has the journalled size and sha256 (reads it once)."""
    name = entry["name"]
    try:
        if not storage.exists(name) or storage.size(name) != entry["bytes"]:
            return False
        return storage.sha256(name) == (entry["bytes"], entry["sha256"])
    except WdspqError:
        return False


def _existing_manifest(storage: Storage) -> tuple[dict[str, Any] | None, str | None]:
    """The manifest already under the output (None if there is none) and why it is unusable, if it is."""
    if not storage.exists(MANIFEST_NAME):
        return None, None
    try:
        data = json.loads(storage.read_bytes(MANIFEST_NAME))
    except (ValueError, WdspqError) as e:
        return {}, f"it cannot be read ({e})"
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return {}, "it is not a wdspq manifest"
    return data, None


def _config_difference(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "it records no export configuration"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "it differs in " + ", ".join(keys) if keys else "its configuration differs"


# ---------------------------------------------------------------------------------------------------


def export_shards(
    table: str | os.PathLike,
    out: str | os.PathLike,
    spec: WindowSpec | dict[str, Any],
    tokenizer: Any = None,
    samples_per_shard: int = 1000,
    seed: int = 0,
    shuffle: bool = True,
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
    spill_dir: str | os.PathLike | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export every window of `table` into WebDataset shards under `out` (a folder or `s3://bucket/prefix`).

    Shards are `shard-000000.tar`, ...; `manifest.json` is written last. Returns the manifest dict.

    - Deterministic: the same table, spec, tokenizer, `samples_per_shard`, `seed` and `shuffle` give
      byte-identical shards and manifest for any `workers`.
    - Restartable: after an interruption, re-run the same call. The spill folder (default: a hidden
      `.wdspq-spill-<config>` folder inside a local `out`, or `$TMPDIR/wdspq-spill-<config>` for S3) is
      kept on failure and holds the journal; shards committed intact are reused, the rest rewritten.
      It is removed after success. A reader never sees a partial shard under its final name.
    - An `out` that already holds a finished export with the same configuration is checked and returned
      as is; one with another configuration raises (naming its manifest) unless `overwrite=True`, which
      replaces it (stale shards are deleted after the new manifest is written).
    - `spill_dir` overrides the spill folder (it must be local and is not removed if given).
    """
    samples_per_shard = _check_int("samples_per_shard", samples_per_shard, 1)
    seed = _check_int("seed", seed, 0)
    workers = _check_int("workers", workers, 1)
    table = os.fspath(table)
    out = os.fspath(out)
    if not os.path.isfile(table):
        raise WdspqError(f"{table}: table file does not exist")
    if not out.startswith("s3://"):
        if os.path.isfile(out):
            raise WdspqError(f"{out}: the output must be a folder (or s3://bucket/prefix), but it is a file")
    spec = spec if isinstance(spec, WindowSpec) else WindowSpec.from_dict(spec)
    read_meta(table)  # fail early, naming the file, on a non-wdspq table
    open_storage(out, **(storage_options or {}))  # fail early on a bad URL
    ds = ParquetWindowDataset(table, spec, tokenizer=tokenizer)
    n = len(ds)
    if n == 0:
        raise WdspqError(f"{table}: the window spec gives no windows (episodes shorter than the window?)")
    config = {
        "table": _table_fingerprint(table),
        "spec": spec.to_dict(),
        "tokenizer": ds.tokenizer_id["vocab_sha256"],
        "samples_per_shard": samples_per_shard,
        "seed": seed,
        "shuffle": bool(shuffle),
        "format": MANIFEST_VERSION,
    }
    digest = _config_digest(config)
    shards_windows = shard_assignment(n, samples_per_shard, seed, bool(shuffle))
    own_spill = spill_dir is None
    spill_root = Path(spill_dir) if spill_dir is not None else _default_spill_dir(out, digest)
    options = dict(storage_options or {})
    if out.startswith("s3://"):  # S3 staging files inside the spill folder: removed with it, even after a kill
        options.setdefault("staging_dir", str(spill_root))
    storage = open_storage(out, **options)

    # An export already there: same configuration -> reuse; another -> refuse unless overwrite.
    candidates: dict[str, dict[str, Any]] = {}
    existing, unusable = _existing_manifest(storage)
    if existing is not None:
        same = not unusable and existing.get("export_config_digest") == digest
        if same:
            entries = existing.get("shards", [])
            if len(entries) == len(shards_windows) and all(_shard_intact(storage, e) for e in entries):
                return existing
            candidates = {e["name"]: e for e in entries if isinstance(e, dict) and "name" in e}
        elif not overwrite:
            why = unusable or _config_difference(existing.get("export_config"), config)
            raise WdspqError(
                f"{storage.url(MANIFEST_NAME)}: the output already holds an export and {why}; "
                "pass overwrite=True (wdspq export --overwrite) to replace it, or choose another output"
            )
        storage.delete(MANIFEST_NAME)  # from here on the folder is visibly an unfinished export

    spill_root.mkdir(parents=True, exist_ok=True)
    journal_path = spill_root / JOURNAL_NAME
    candidates.update(_read_journal(journal_path, digest))

    n_chunks = (ds.num_episodes + EPISODES_PER_CHUNK - 1) // EPISODES_PER_CHUNK
    pool = _Workers(workers, {"ds": ds, "spill_root": str(spill_root), "storage": storage})
    journal = _Journal(journal_path, digest)
    try:
        # Phase 1: spill (chunk jobs, windows/s progress).
        loc = np.zeros((n, 3), dtype=np.int64)  # window -> (chunk, offset, length) in the spill files
        chunk_stats: list[dict[str, _Stats] | None] = [None] * n_chunks
        jobs = ((c, e0, min(e0 + EPISODES_PER_CHUNK, ds.num_episodes))
                for c, e0 in enumerate(range(0, ds.num_episodes, EPISODES_PER_CHUNK)))
        with tqdm(total=n, desc="export: cut windows", unit="win", disable=not progress, smoothing=0.1) as bar:
            for res in pool.run(_spill_chunk, jobs):
                idx = res["index"]
                loc[idx[:, 0], 0] = res["chunk"]
                loc[idx[:, 0], 1:] = idx[:, 1:]
                chunk_stats[res["chunk"]] = res["stats"]
                bar.update(len(idx))
        features = _features(ds)
        stats = {f: _Stats.empty(dim) for f, dim in features.items()}
        for cs in chunk_stats:  # fixed chunk order: identical floats whatever the worker count
            assert cs is not None
            for f in features:
                stats[f].merge(cs[f])

        # Phase 2: assemble shards, reusing those committed intact before.
        entries: list[dict[str, Any] | None] = [None] * len(shards_windows)
        todo: list[int] = []
        for i, wins in enumerate(shards_windows):
            prev = candidates.get(shard_name(i))
            if prev is not None and prev.get("samples") == len(wins) and _shard_intact(storage, prev):
                entries[i] = prev
            else:
                todo.append(i)
        reused = sum(len(shards_windows[i]) for i in range(len(shards_windows)) if entries[i] is not None)
        with tqdm(total=n, initial=reused, desc="export: write shards", unit="win", disable=not progress) as bar:
            jobs2 = ((i, shards_windows[i], loc[shards_windows[i]]) for i in todo)
            for entry in pool.run(_assemble_shard, jobs2):
                entries[int(entry["name"][6:12])] = entry
                journal.append(entry)
                bar.update(entry["samples"])
    finally:
        journal.close()
        pool.close()

    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "wdspq_version": __version__,
        "export_config": config,
        "export_config_digest": digest,
        "table": {"name": Path(table).name, **config["table"]},
        "table_meta": json.loads(ds.meta.to_json()),
        "spec": spec.to_dict(),
        "resolved": ds.rspec.summary(),
        "tokenizer": {k: v for k, v in ds.tokenizer_id.items() if k != "requested"},
        "sample_schema": [{"key": k, **v} for k, v in ds.sample_schema().items()],  # ordered: the record layout
        "encoding": {
            "member": MEMBER,
            "layout": "one 0-d structured npy record per sample, one aligned field per sample key",
            "frames": "raw uint8 (lossless)",
        },
        "num_windows": n,
        "num_episodes": ds.num_episodes,
        "seed": seed,
        "shuffle": bool(shuffle),
        "samples_per_shard": samples_per_shard,
        "stats": {f: stats[f].to_dict() for f in features},
        "shards": entries,
    }
    storage.put_bytes(MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True).encode())
    if own_spill:
        shutil.rmtree(spill_root, ignore_errors=True)
    if not out.startswith("s3://"):  # staging files left by a killed run (the storage layer's naming)
        for p in Path(out).glob(".shard-*.tar.tmp-*"):
            p.unlink(missing_ok=True)
    keep = {e["name"] for e in entries if e is not None}
    for name in storage.list("shard-"):
        if _SHARD_RE.match(name) and name not in keep:  # shards of a replaced, larger export
            storage.delete(name)
    return manifest
