"""The two export phases, run as pool jobs: spill (cut and encode windows) and assemble (write a shard).

*spill*: a chunk of episodes is cut into windows; each window is encoded into its final tar bytes
(`shardfmt.sample_tar`, position-independent) and appended to one local spill file, with an index
(window, offset, length), the chunk's statistics and, for a lossy encoding, its largest frame error,
written atomically so an interrupted export resumes per chunk.
*assemble*: a shard is the concatenation of its windows' spilled bytes in shard order plus the end of
the archive; its index sidecar is written beside it. Both are committed under their final names only
when complete (a rename locally, an upload on S3).
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ShardError, WdspqError
from ..shardfmt import SampleCodec, end_of_archive, index_bytes, index_name, key_of, sample_tar
from ..storage import Storage
from ..table_dataset import ParquetWindowDataset
from .pool import W, check_parent
from .stats import RunningStats

_OPEN_SPILLS = 64  # spill files a shard writer keeps open at once
_STATS_FLUSH_ROWS = 1 << 16


def shard_name(i: int) -> str:
    return f"shard-{i:06d}.tar"


def chunk_paths(spill_root: str | Path, chunk: int) -> tuple[Path, Path, Path]:
    base = Path(spill_root) / f"chunk-{chunk:06d}"
    return base.with_suffix(".bin"), base.with_suffix(".idx.npy"), base.with_suffix(".stats.npz")


def features(ds: ParquetWindowDataset) -> dict[str, int]:
    """The numeric streams that get normalisation statistics: actions and every signal stream (name -> width)."""
    return {"actions": ds.meta.actions.width, **{s.name: s.width for s in ds.meta.signals}}


def _load_chunk(chunk: int, spill_root: str, feats: Iterable[str]) -> dict[str, Any] | None:
    """A chunk spilled by an earlier run, or None when it is missing or damaged (then it is redone)."""
    data, idx, st = chunk_paths(spill_root, chunk)
    try:
        index = np.load(idx)
        with np.load(st) as d:
            stats = {f: RunningStats.from_arrays(d, f) for f in feats}
            frame_error = int(d["frame_error"])
        size = data.stat().st_size
    except (OSError, ValueError, KeyError, EOFError):
        return None
    if index.ndim != 2 or index.shape[1] != 3 or (len(index) and int(index[-1, 1] + index[-1, 2]) != size):
        return None
    return {"chunk": chunk, "index": index, "stats": stats, "frame_error": frame_error}


def spill_chunk(job: tuple[int, int, int]) -> dict[str, Any]:
    """Phase 1 job: cut every window of episodes [e0, e1) and write their encoded tar bytes to one spill file."""
    check_parent()
    chunk, e0, e1 = job
    ds: ParquetWindowDataset = W["ds"]
    spill_root: str = W["spill_root"]
    feats = features(ds)
    done = _load_chunk(chunk, spill_root, feats)
    if done is not None:
        return done
    codec = SampleCodec(ds.sample_schema(), W["encoding"])
    data_path, idx_path, stats_path = chunk_paths(spill_root, chunk)
    suffix = f".tmp-{os.getpid()}"
    tmp = [p.with_name(p.name + suffix) for p in (data_path, idx_path, stats_path)]
    rows: list[tuple[int, int, int]] = []
    stats = {f: RunningStats.empty(dim) for f, dim in feats.items()}
    pending: dict[str, list[np.ndarray]] = {f: [] for f in feats}
    n_pending, frame_error = 0, 0
    with open(tmp[0], "wb") as f:
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
                for feat in feats:
                    real = s[feat][s[f"{feat}_mask"]]
                    pending[feat].append(real)
                    n_pending += len(real)
                if n_pending >= _STATS_FLUSH_ROWS:
                    for feat in feats:
                        stats[feat].add(np.concatenate(pending[feat]))
                        pending[feat].clear()
                    n_pending = 0
                w = int(s["window_index"])
                members = codec.encode(s, where=f"{where}, window {w}")
                frame_error = max(frame_error, codec.frame_error(s, members))
                blob = sample_tar(key_of(w), members)
                rows.append((w, f.tell(), len(blob)))
                f.write(blob)
        for feat in feats:
            if pending[feat]:
                stats[feat].add(np.concatenate(pending[feat]))
        f.flush()
        os.fsync(f.fileno())
    index = np.array(rows, dtype=np.int64).reshape(-1, 3)
    with open(tmp[1], "wb") as f:
        np.save(f, index)
    with open(tmp[2], "wb") as f:
        arrays = {k: v for feat in feats for k, v in stats[feat].arrays(feat).items()}
        np.savez(f, frame_error=np.int64(frame_error), **arrays)
    for t, p in zip(tmp, (data_path, idx_path, stats_path)):
        os.replace(t, p)  # the stats file last: its presence marks the chunk complete
    return {"chunk": chunk, "index": index, "stats": stats, "frame_error": frame_error}


def assemble_shard(job: tuple[int, np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Phase 2 job: write one shard and its index from spilled samples in shard order; its manifest entry."""
    check_parent()
    number, windows, locations = job
    storage: Storage = W["storage"]
    spill_root: str = W["spill_root"]
    name = shard_name(number)
    staging = storage.staging_path(name)
    spans = np.zeros((len(windows), 2), dtype=np.int64)
    h = hashlib.sha256()
    files: OrderedDict[int, Any] = OrderedDict()
    size = 0
    try:
        with open(staging, "wb") as out:
            for i, (w, (chunk, off, length)) in enumerate(zip(windows.tolist(), locations.tolist())):
                fd = files.get(chunk)
                if fd is None:
                    if len(files) >= _OPEN_SPILLS:
                        files.popitem(last=False)[1].close()
                    fd = files[chunk] = open(chunk_paths(spill_root, chunk)[0], "rb")
                else:
                    files.move_to_end(chunk)
                fd.seek(off)
                blob = fd.read(length)
                if len(blob) != length:
                    raise ShardError(f"{fd.name}: spill file is truncated (window {w}); delete it and re-run")
                spans[i] = (size, length)
                h.update(blob)
                out.write(blob)
                size += length
            tail = end_of_archive(size)
            h.update(tail)
            out.write(tail)
            size += len(tail)
            out.flush()
            os.fsync(out.fileno())
        ix_name, ix_data = index_name(name), index_bytes(spans)
        storage.put_bytes(ix_name, ix_data)  # the index first: a shard under its name always has one
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
        "index": {"name": ix_name, "bytes": len(ix_data), "sha256": hashlib.sha256(ix_data).hexdigest()},
        "first_window": int(windows[0]) if len(windows) else None,
    }
