"""Export the table into pre-windowed WebDataset shards with a manifest (DESIGN.md "Shards").

Two phases, both byte-deterministic whatever the number of worker processes:
1. *spill*: episodes are cut into windows in fixed chunks of episodes (the chunking does not depend
   on `workers`); each chunk's encoded samples go to one spill file with an index, written atomically,
   so an interrupted export resumes at chunk granularity.
2. *assemble*: each shard's windows (a seeded permutation of all windows, cut into consecutive runs
   of `samples_per_shard`) are read back from the spills and written with `webdataset.TarWriter`
   (fixed mtime/owner/mode, sorted members) to a staging file, then committed under the final name.
   A journal records each committed shard; a re-run reuses shards whose size and sha256 still match.
The manifest (with per-sample byte offsets and normalisation statistics) is written last.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
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
from .storage import open_storage
from .table_dataset import ParquetWindowDataset
from .text import DEFAULT_TOKENIZER
from .windows import WindowSpec

JOURNAL_NAME = ".wdspq-export-journal.jsonl"
EPISODES_PER_CHUNK = 8
FEATURES = ("actions", "observations")


def shard_name(i: int) -> str:
    return f"shard-{i:06d}.tar"


@dataclass
class _Stats:
    """Running per-feature statistics over real (unmasked) rows, mergeable in a fixed order."""

    count: np.ndarray
    total: np.ndarray
    total_sq: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> _Stats:
        return cls(
            np.zeros(1, np.int64),
            np.zeros(dim, np.float64),
            np.zeros(dim, np.float64),
            np.full(dim, np.inf),
            np.full(dim, -np.inf),
        )

    def add(self, rows: np.ndarray) -> None:
        if len(rows):
            r = rows.astype(np.float64)
            self.count += len(r)
            self.total += r.sum(0)
            self.total_sq += (r * r).sum(0)
            self.lo = np.minimum(self.lo, r.min(0))
            self.hi = np.maximum(self.hi, r.max(0))

    def merge(self, other: _Stats) -> None:
        self.count += other.count
        self.total += other.total
        self.total_sq += other.total_sq
        self.lo = np.minimum(self.lo, other.lo)
        self.hi = np.maximum(self.hi, other.hi)

    def to_dict(self) -> dict[str, Any]:
        n = int(self.count[0])
        mean = self.total / max(n, 1)
        var = np.maximum(self.total_sq / max(n, 1) - mean * mean, 0.0)
        return {
            "count": n,
            "mean": mean.tolist(),
            "std": np.sqrt(var).tolist(),
            "min": self.lo.tolist() if n else [],
            "max": self.hi.tolist() if n else [],
        }


def _config_digest(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _table_fingerprint(path: str) -> dict[str, Any]:
    """Cheap identity of the table file: size and a hash of its footer (which holds row-group stats)."""
    st = os.stat(path)
    with open(path, "rb") as f:
        f.seek(max(0, st.st_size - 65536))
        tail = f.read()
    return {"name": Path(path).name, "bytes": st.st_size, "footer_sha256": hashlib.sha256(tail).hexdigest()}


def _spill_chunk(args: tuple) -> dict[str, Any]:
    """Phase 1 worker: cut every window of episodes [e0, e1) and append encoded samples to one spill file."""
    ds, chunk, e0, e1, spill_dir = args
    codec = SampleCodec(ds.sample_schema())
    final = Path(spill_dir) / f"chunk-{chunk:06d}.bin"
    index_path = final.with_suffix(".idx.npy")
    stats_path = final.with_suffix(".stats.pkl")
    if final.exists() and index_path.exists() and stats_path.exists():
        with open(stats_path, "rb") as f:
            stats = pickle.load(f)
        return {"chunk": chunk, "index": np.load(index_path), "stats": stats, "path": str(final)}
    tmp = final.with_name(final.name + f".tmp-{os.getpid()}")
    rows = []
    stats = {"actions": _Stats.empty(ds.meta.action_dim), "observations": _Stats.empty(ds.meta.obs_dim)}
    with open(tmp, "wb") as f:
        for ep in range(e0, e1):
            try:
                windows = list(ds.episode_windows(ep))
            except WdspqError:
                raise
            except Exception as e:  # a decoder or Arrow failure: name the episode
                raise ShardError(
                    f"{ds.path}: episode {ds.episode_ids[ep]!r} (row {ep}) could not be windowed: {e}"
                ) from e
            for s in windows:
                for feat in FEATURES:
                    stats[feat].add(s[feat][s[f"{feat}_mask"]])
                payload = codec.encode(s)[MEMBER]
                rows.append((int(s["window_index"]), f.tell(), len(payload)))
                f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    index = np.array(rows, dtype=np.int64).reshape(-1, 3)
    with open(stats_path.with_name(stats_path.name + ".tmp"), "wb") as sf:
        pickle.dump(stats, sf)
    np.save(index_path.with_name(index_path.name + ".tmp.npy"), index)
    os.replace(tmp, final)
    os.replace(index_path.with_name(index_path.name + ".tmp.npy"), index_path)
    os.replace(stats_path.with_name(stats_path.name + ".tmp"), stats_path)
    return {"chunk": chunk, "index": index, "stats": stats, "path": str(final)}


def _assemble_shard(args: tuple) -> dict[str, Any]:
    """Phase 2 worker: write one shard from spilled samples in its final order; return its manifest entry."""
    storage, number, windows, locations, spill_paths = args
    name = shard_name(number)
    staging = storage.staging_path(name)
    offsets = []
    h = hashlib.sha256()
    files = {}
    try:
        with open(staging, "wb") as raw:
            hashing = _HashingWriter(raw, h)
            with wds.TarWriter(hashing, user="wdspq", group="wdspq", mode=0o444, mtime=0) as tw:
                for w, (chunk, off, length) in zip(windows, locations):
                    fd = files.get(chunk)
                    if fd is None:
                        fd = files[chunk] = open(spill_paths[chunk], "rb")
                    fd.seek(off)
                    offsets.append(tw.tarstream.offset)
                    tw.write({"__key__": key_of(w), MEMBER: fd.read(length)})
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


def shard_assignment(n_windows: int, samples_per_shard: int, seed: int, shuffle: bool) -> list[np.ndarray]:
    """Window indices of each shard in write order: a seeded permutation cut into consecutive runs."""
    order = np.random.default_rng(seed).permutation(n_windows) if shuffle else np.arange(n_windows)
    return [order[i : i + samples_per_shard] for i in range(0, n_windows, samples_per_shard)]


def _pool_map(fn: Any, jobs: Sequence[Any], workers: int) -> Iterator[Any]:
    if workers <= 1:
        yield from map(fn, jobs)
    else:
        with ProcessPoolExecutor(workers) as pool:
            yield from pool.map(fn, jobs)


def export_shards(
    table: str | os.PathLike,
    out: str | os.PathLike,
    spec: WindowSpec | dict[str, Any],
    tokenizer: Any = DEFAULT_TOKENIZER,
    samples_per_shard: int = 1000,
    seed: int = 0,
    shuffle: bool = True,
    workers: int = 1,
    progress: bool = True,
    spill_dir: str | os.PathLike | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export every window of `table` into WebDataset shards under `out` (a folder or `s3://bucket/prefix`).

    Returns the manifest dict. Re-running after an interruption reuses completed work (see module doc).
    """
    if samples_per_shard < 1:
        raise WdspqError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    table = str(table)
    spec = spec if isinstance(spec, WindowSpec) else WindowSpec.from_dict(spec)
    read_meta(table)  # fail early, naming the file, on a missing or non-wdspq table
    storage = open_storage(str(out), **(storage_options or {}))
    ds = ParquetWindowDataset(table, spec, tokenizer=tokenizer)
    n = len(ds)
    if n == 0:
        raise WdspqError(f"{table}: the window spec gives no windows (episodes are shorter than the window?)")
    config = {
        "table": _table_fingerprint(table),
        "spec": spec.to_dict(),
        "tokenizer": ds.tokenizer_id["vocab_sha256"],
        "samples_per_shard": samples_per_shard,
        "seed": seed,
        "shuffle": shuffle,
        "format": MANIFEST_VERSION,
    }
    digest = _config_digest(config)
    own_spill = spill_dir is None
    spill_root = Path(spill_dir) if spill_dir else _default_spill_dir(out, digest)
    spill_root.mkdir(parents=True, exist_ok=True)

    # Phase 1: spill.
    chunks = [
        (ds, c, e0, min(e0 + EPISODES_PER_CHUNK, ds.num_episodes), str(spill_root))
        for c, e0 in enumerate(range(0, ds.num_episodes, EPISODES_PER_CHUNK))
    ]
    spilled: list[dict[str, Any]] = [None] * len(chunks)  # type: ignore[list-item]
    bar = tqdm(total=n, desc="export: windows", unit="win", disable=not progress, smoothing=0.1)
    for res in _pool_map(_spill_chunk, chunks, workers):
        spilled[res["chunk"]] = res
        bar.update(len(res["index"]))
    bar.close()
    loc = np.zeros((n, 3), dtype=np.int64)  # window -> (chunk, offset, length)
    for res in spilled:
        idx = res["index"]
        loc[idx[:, 0], 0] = res["chunk"]
        loc[idx[:, 0], 1:] = idx[:, 1:]
    stats = {f: _Stats.empty(d) for f, d in (("actions", ds.meta.action_dim), ("observations", ds.meta.obs_dim))}
    for res in spilled:  # fixed chunk order: identical float sums whatever the worker count
        for f in FEATURES:
            stats[f].merge(res["stats"][f])
    spill_paths = [res["path"] for res in spilled]

    # Phase 2: assemble shards, reusing those a previous run committed intact.
    shards_windows = shard_assignment(n, samples_per_shard, seed, shuffle)
    journal = _read_journal(storage, digest)
    entries: list[dict[str, Any]] = [None] * len(shards_windows)  # type: ignore[list-item]
    todo = []
    for i, wins in enumerate(shards_windows):
        prev = journal.get(shard_name(i))
        if prev is not None and _shard_intact(storage, prev):
            entries[i] = prev
        else:
            todo.append((storage, i, wins, loc[wins], spill_paths))
    bar = tqdm(total=len(shards_windows), initial=len(shards_windows) - len(todo), desc="export: shards",
               unit="shard", disable=not progress)
    for entry in _pool_map(_assemble_shard, todo, workers):
        number = int(entry["name"][6:12])
        entries[number] = entry
        _append_journal(storage, digest, entry)
        bar.update(1)
    bar.close()

    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "wdspq_version": __version__,
        "table": config["table"],
        "table_meta": json.loads(ds.meta.to_json()),
        "spec": spec.to_dict(),
        "resolved": {"A": ds.rspec.A, "O": ds.rspec.O, "obs_rate_hz": ds.rspec.obs_rate_hz},
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
        "shuffle": shuffle,
        "samples_per_shard": samples_per_shard,
        "stats": {f: stats[f].to_dict() for f in FEATURES},
        "shards": entries,
    }
    storage.put_bytes(MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True).encode())
    if storage.exists(JOURNAL_NAME):
        storage.delete(JOURNAL_NAME)
    if own_spill:
        shutil.rmtree(spill_root, ignore_errors=True)
    return manifest


def _default_spill_dir(out: str | os.PathLike, digest: str) -> Path:
    """Local scratch for phase 1: next to a local output (same disk), else in the temp dir; stable per config."""
    s = str(out)
    if s.startswith("s3://"):
        return Path(tempfile.gettempdir()) / f"wdspq-spill-{digest}"
    return Path(s) / f".wdspq-spill-{digest}"


def _read_journal(storage: Any, digest: str) -> dict[str, dict[str, Any]]:
    if not storage.exists(JOURNAL_NAME):
        return {}
    out = {}
    for line in storage.read_bytes(JOURNAL_NAME).decode().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill: that shard is simply redone
        if rec.get("config") == digest:
            out[rec["entry"]["name"]] = rec["entry"]
    return out


def _append_journal(storage: Any, digest: str, entry: dict[str, Any]) -> None:
    old = storage.read_bytes(JOURNAL_NAME) if storage.exists(JOURNAL_NAME) else b""
    line = json.dumps({"config": digest, "entry": entry}, sort_keys=True).encode() + b"\n"
    storage.put_bytes(JOURNAL_NAME, old + line)


def _shard_intact(storage: Any, entry: dict[str, Any]) -> bool:
    name = entry["name"]
    if not storage.exists(name) or storage.size(name) != entry["bytes"]:
        return False
    h = hashlib.sha256()
    with storage.open_read(name) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest() == entry["sha256"]
