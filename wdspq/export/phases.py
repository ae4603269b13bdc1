"""The two export phases, run as pool jobs: spill (cut and encode windows) and assemble (write a shard).

*spill*: a chunk of episodes is cut into windows; each window is encoded into its final tar bytes
(`shardfmt.sample_tar`, position-independent) and appended to one local spill file, with an index
(window, offset, length) and, for a lossy encoding, its largest frame error,
written atomically (`storage.base.commit_file`: fsync, rename, fsync the folder) so an interrupted export
resumes per chunk.
*assemble*: a shard is the concatenation of its windows' spilled bytes in shard order plus the end of
the archive; its index sidecar is written beside it. Both are committed under their final names only
when complete (a rename locally, an upload on S3).
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from .. import interrupt
from ..errors import ShardError, WdspqError
from ..shardfmt import SampleCodec, end_of_archive, index_bytes, index_name, key_of, sample_tar, shard_name
from ..shardfmt.manifest import file_entry
from ..shardfmt.shared import pack_tar_length
from ..storage import Storage
from ..storage.base import commit_file
from ..table.episodes import EpisodeSource
from .pool import JOB_STATE, check_parent

_OPEN_SPILLS = 64  # spill files a shard writer keeps open at once


def disk_error(path: str | os.PathLike, e: OSError, what: str) -> WdspqError:
    """An OSError while writing export files, as an error naming the file (ENOSPC has no filename)."""
    if isinstance(e, WdspqError):
        return e
    hint = "; free space there (or pass --spill-dir on another disk for the spill) and re-run" \
        if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return WdspqError(f"{path}: cannot write the {what}: {e.strerror or e}{hint}")


def _write(f: Any, data: bytes, path: Path) -> None:
    try:
        f.write(data)
    except OSError as e:
        raise disk_error(path, e, "spill file") from None


def _spill_staging(path: Path, pid: int | None = None) -> Path:
    """Where a spill file is written before its commit: `<name>.tmp-<pid>` beside it."""
    return path.with_name(f"{path.name}.tmp-{os.getpid() if pid is None else pid}")


def remove_spill_staging(spill_root: str | Path, pids: list[int] | None = None) -> None:
    """Partial spill files of the processes `pids`, or with None of every process (none may be writing)."""
    for pattern in ["*.tmp-*"] if pids is None else [f"*.tmp-{pid}" for pid in pids]:
        for p in Path(spill_root).glob(pattern):
            p.unlink(missing_ok=True)


def chunk_paths(spill_root: str | Path, chunk: int) -> tuple[Path, Path, Path]:
    base = Path(spill_root) / f"chunk-{chunk:06d}"
    return base.with_suffix(".bin"), base.with_suffix(".idx.npy"), base.with_suffix(".done.npz")


def _load_chunk(chunk: int, spill_root: str) -> dict[str, Any] | None:
    """A chunk spilled by an earlier run, or None when it is missing or damaged (then it is redone)."""
    data, idx, done = chunk_paths(spill_root, chunk)
    try:
        index = np.load(idx)
        with np.load(done) as d:
            frame_error = int(d["frame_error"])
        size = data.stat().st_size
    except (OSError, ValueError, KeyError, EOFError):
        return None
    if index.ndim != 2 or index.shape[1] != 3 or (len(index) and int(index[-1, 1] + index[-1, 2]) != size):
        return None
    return {"chunk": chunk, "index": index, "frame_error": frame_error}


def spill_chunk(job: tuple[int, int, int]) -> dict[str, Any]:
    """Phase 1 job: cut every window of episodes [e0, e1) and write their encoded tar bytes to one spill file."""
    check_parent()
    chunk, e0, e1 = job
    ds: EpisodeSource = JOB_STATE.ds
    spill_root = JOB_STATE.spill_root
    done = _load_chunk(chunk, spill_root)
    if done is not None:
        return done
    codec: SampleCodec = JOB_STATE.codec
    paths = chunk_paths(spill_root, chunk)
    tmp = [_spill_staging(p) for p in paths]
    rows: list[tuple[int, int, int]] = []
    frame_error = 0
    segment = codec.encoding.segment if codec.encoding.layout == "shared-frames" else 0
    try:
        with open(tmp[0], "wb") as f:
            for ep in range(e0, e1):
                interrupt.check()  # in the export process (one worker); pool workers die on SIGTERM
                where = f"{ds.path}: episode {ds.episode_ids[ep]!r} (row {ep})"
                it = ds.episode_windows(ep)
                if segment:
                    _spill_segments(codec, it, segment, where, rows, f, paths[0])
                    continue
                while True:
                    try:
                        s = next(it, None)
                    except WdspqError:
                        raise
                    except Exception as e:  # a decoder or Arrow failure: name the episode
                        raise ShardError(f"{where} could not be windowed: {type(e).__name__}: {e}") from e
                    if s is None:
                        break
                    w = int(s["window_index"])
                    members = codec.encode(s, where=f"{where}, window {w}")
                    frame_error = max(frame_error, codec.frame_error(s, members))
                    blob = sample_tar(key_of(w), members)
                    rows.append((w, f.tell(), len(blob)))
                    _write(f, blob, paths[0])
        index = np.array(rows, dtype=np.int64).reshape(-1, 3)
        for t, p, data in ((tmp[1], paths[1], index), (tmp[2], paths[2], None)):
            try:
                with open(t, "wb") as f:
                    if data is None:
                        np.savez(f, frame_error=np.int64(frame_error))
                    else:
                        np.save(f, data)
            except OSError as e:
                raise disk_error(p, e, "spill file") from None
        for t, p in zip(tmp, paths):
            commit_file(t, p)  # the done file last: its presence marks the chunk complete
    except OSError as e:
        raise disk_error(paths[0], e, "spill file") from None
    finally:  # a partial spill file never stays behind (it could keep a full disk full)
        for t in tmp:
            if t.exists():
                t.unlink(missing_ok=True)
    return {"chunk": chunk, "index": index, "frame_error": frame_error}


def _spill_segments(codec: Any, it: Any, segment: int, where: str, rows: list[tuple[int, int, int]], f: Any,
                    path: Any) -> None:
    """Shared frames: an episode's windows in segments of `segment`; the first window's bytes carry the
    segment's frame pack (`shardfmt.shared.segment_blobs`)."""
    from ..shardfmt.shared import segment_blobs

    buf: list[dict[str, Any]] = []
    while True:
        try:
            s = next(it, None)
        except WdspqError:
            raise
        except Exception as e:
            raise ShardError(f"{where} could not be windowed: {type(e).__name__}: {e}") from e
        if s is not None:
            buf.append(s)
        if buf and (s is None or len(buf) == segment):
            for sample, blob in zip(buf, segment_blobs(codec, buf, f"{where}, window {int(buf[0]['window_index'])}")):
                rows.append((int(sample["window_index"]), f.tell(), len(blob)))
                _write(f, blob, path)
            buf = []
        if s is None:
            return


def assemble_shard(job: tuple[int, np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Phase 2 job: write one shard and its index from spilled samples in shard order; its manifest entry."""
    check_parent()
    number, windows, locations = job
    storage: Storage = JOB_STATE.storage
    spill_root = JOB_STATE.spill_root
    name = shard_name(number)
    staging = storage.staging_path(name)
    encoding = getattr(JOB_STATE.codec, "encoding", None)
    shared = encoding is not None and encoding.layout == "shared-frames"
    spans = np.zeros((len(windows), 4 if shared else 2), dtype=np.int64)
    h = hashlib.sha256()
    files: OrderedDict[int, Any] = OrderedDict()
    size = 0
    try:
        with open(staging, "wb") as out:
            for i, (w, (chunk, off, length)) in enumerate(zip(windows.tolist(), locations.tolist())):
                if i % 256 == 0:
                    interrupt.check()
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
                if shared:  # (sample member, its frame pack): a segment's first blob opens with the pack
                    p = pack_tar_length(blob)
                    spans[i] = (size + p, length - p, size, p) if p else (size, length, spans[i - 1, 2], spans[i - 1, 3])
                else:
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
    except OSError as e:
        storage.discard(staging)
        raise disk_error(storage.url(name) + f" (staged at {staging})", e, "shard") from None
    except BaseException:
        storage.discard(staging)
        raise
    finally:
        for fd in files.values():
            fd.close()
    return {
        **file_entry(name, size, h.hexdigest()),
        "samples": len(windows),
        "index": file_entry(ix_name, len(ix_data), hashlib.sha256(ix_data).hexdigest()),
        "first_window": int(windows[0]) if len(windows) else None,
    }
