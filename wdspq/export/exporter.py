"""Export the table into pre-windowed WebDataset shards with a manifest (docs/shards.md).

Two phases (`phases.py`), both byte-deterministic whatever the number of worker processes:

1. *spill*: episodes are cut into windows in fixed chunks of `EPISODES_PER_CHUNK` episodes (the
   chunking does not depend on `workers`); each window is encoded once into its final tar bytes and
   appended to the chunk's local spill file, written atomically, so an interrupted export resumes per
   chunk. Memory is bounded by one decoded episode per worker, never by the number of windows.
2. *assemble*: each shard's windows (a seeded permutation of all windows, cut into consecutive runs of
   `samples_per_shard`: `shardfmt.names.shard_assignment`) are copied from the spills into a staging file, committed with its index
   sidecar through the storage layer. After each commit one line is appended to a local journal in
   the spill folder; a re-run reuses journalled shards whose sizes and sha256 still match.

The manifest (O(shards): per shard its size, sha256 and index's sha256; normalisation statistics of
actions and every signal over every table row, with their own sha256; the export configuration) is
written last, then the spill folder is removed (`finish.py`). Held in memory beyond one episode: a few
int64 arrays of length `num_windows` (the permutation and each window's spill location) in the
exporting process only.

This module is the orchestration: checks, the reuse of a finished export, the lock, the two phases
run by an engine (`pool.Workers`, local processes; `ray_engine.RayWorkers`, Ray tasks).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .. import interrupt
from ..errors import WdspqError
from ..shardfmt import (
    DEFAULT_ENCODING,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    Encoding,
)
from ..shardfmt.names import parse_shard_index, shard_assignment, shard_name
from ..storage import open_storage
from ..table import read_meta
from ..table.episodes import EpisodeSource
from ..table.stats import table_stats
from ..windows import WINDOW_RULES_VERSION, WindowSpec
from .finish import finish_export, remove_staging
from .journal import JOURNAL_NAME, Journal, config_difference, existing_manifest, read_journal, shard_intact
from .lock import LocalLock, export_lock
from .phases import assemble_shard, spill_chunk
from .plan import (
    check_int,
    config_digest,
    credit_existing,
    default_spill_dir,
    estimate_export,
    segment_assignment,
    space_problem,
    table_fingerprint,
    tune_codec,
)
from .pool import Workers

EPISODES_PER_CHUNK = 8
EXPORT_CACHE_BYTES = 64 * 2**20  # the exporter reads each episode once: a decode cache would only grow with the table


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def _encoding(encoding: Encoding | dict[str, Any] | None) -> Encoding:
    if encoding is None:
        return DEFAULT_ENCODING
    return encoding if isinstance(encoding, Encoding) else Encoding.from_dict(encoding)


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
    encoding: Encoding | dict[str, Any] | None = None,
    dry_run: bool = False,
    force: bool = False,
    engine: str = "local",
    ray_address: str | None = None,
    report: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export every window of `table` into WebDataset shards under `out` (a folder or `s3://bucket/prefix`).

    Shards are `shard-000000.tar` with index sidecars `shard-000000.idx.npy`; `manifest.json` is
    written last. Returns the manifest dict (with `dry_run=True`: the size estimate, nothing written).

    - `encoding`: how samples are stored (`shardfmt.Encoding`, or a dict of its fields; default raw frames
      shared by segments of 32 windows in zstd frame packs, each sample a zstd-3 record, lossless, tuned
      on probe windows: `shardfmt.tuning`; `Encoding(layout="per-sample")` keeps samples self-contained).
      A lossy encoding records its largest measured pixel error in the manifest.
    - Deterministic: the same table, spec, tokenizer, encoding, `samples_per_shard`, `seed` and
      `shuffle` give byte-identical shards and manifest for any `workers`.
    - Space: a fresh export first estimates its size and refuses to start when a disk cannot hold
      the shards plus the spill (`force=True` starts anyway).
    - Restartable: after an interruption, re-run the same call. The spill folder (default: a hidden
      `.wdspq-spill-<config>` folder inside a local `out`, or `$TMPDIR/wdspq-spill-<config>-<url hash>` for S3) is
      kept on failure and holds the journal; shards committed intact are reused, the rest rewritten.
      It is removed after success, with the spill folders of other configurations left in `out`.
    - An `out` that already holds a finished export with the same configuration is checked and returned
      as is; one with another configuration raises (naming its manifest) unless `overwrite=True`, which
      replaces it (stale shards are deleted after the new manifest is written).
    - `spill_dir` overrides the spill folder (it must be local and is not removed if given).
    - `engine="ray"` runs the same jobs as Ray tasks (`ray_address`: an existing cluster, e.g. "auto";
      default: the cluster `ray.init()` finds or starts); the output is byte-identical to the local
      engine. On a cluster the table and the spill folder must be on a file system every node sees.
    - One writer at a time: the export holds a lock on `out` (and on a spill folder outside it) while it
      writes; a second export into the same output is refused naming the running one (host, pid,
      since). A crashed export's lock is taken over (docs/reliability.md).
    - `report`: if given, `report["outcome"]` is set to "written" or "complete" (a finished export reused).
    """
    if engine not in ("local", "ray"):
        raise WdspqError(f"export: engine must be 'local' or 'ray', got {engine!r}")
    samples_per_shard = check_int("samples_per_shard", samples_per_shard, 1)
    seed = check_int("seed", seed, 0)
    workers = check_int("workers", workers, 1)
    enc = _encoding(encoding)
    table = os.fspath(table)
    out = os.fspath(out)
    if table.startswith("s3://"):
        pass  # read through the storage layer (read_meta below names a missing object)
    elif os.path.isdir(table):
        raise WdspqError(f"{table}: is a folder; expected a table file (.parquet) made by `wdspq build`")
    elif not os.path.isfile(table):
        raise WdspqError(f"{table}: table file does not exist")
    if not out.startswith("s3://") and os.path.isfile(out):
        raise WdspqError(f"{out}: the output must be a folder (or s3://bucket/prefix), but it is a file")
    spec = spec if isinstance(spec, WindowSpec) else WindowSpec.from_dict(spec)
    read_meta(table)  # fail early, naming the file, on a non-wdspq table
    open_storage(out, **(storage_options or {}))  # fail early on a bad URL
    ds = EpisodeSource(table, spec, tokenizer=tokenizer, cache_bytes=EXPORT_CACHE_BYTES)
    n = len(ds)
    if n == 0:
        raise WdspqError(f"{table}: the window spec gives no windows (episodes shorter than the window?)")
    config = {
        "table": table_fingerprint(table),
        "spec": spec.to_dict(),
        "tokenizer": ds.tokenizer_id["vocab_sha256"],
        "samples_per_shard": samples_per_shard,
        "seed": seed,
        "shuffle": bool(shuffle),
        "format": MANIFEST_VERSION,
        "encoding": enc.to_dict(),
        "window_rules_version": WINDOW_RULES_VERSION,
    }
    digest = config_digest(config)
    own_spill = spill_dir is None
    spill_root = Path(spill_dir) if spill_dir is not None else default_spill_dir(out, digest)
    if dry_run:
        return estimate_export(ds, tune_codec(ds, enc), samples_per_shard, out, spill_root, config["table"]["bytes"])
    if enc.layout == "shared-frames":  # shards of whole segments (windows sharing a frame pack)
        shards_windows = segment_assignment(ds.index.starts, ds.index.counts, enc.segment, samples_per_shard, seed,
                                            bool(shuffle))
    else:
        shards_windows = shard_assignment(n, samples_per_shard, seed, bool(shuffle))
    options = dict(storage_options or {})
    if out.startswith("s3://"):  # S3 staging files inside the spill folder: removed with it, even after a kill
        options.setdefault("staging_dir", str(spill_root))
    storage = open_storage(out, **options)

    # An export already there: same configuration and intact -> reuse, without taking the lock (the
    # output may be read-only); otherwise this export must own the output while it writes.
    existing, unusable = existing_manifest(storage)
    if existing is not None and not unusable and existing.get("export_config_digest") == digest:
        entries = existing.get("shards", [])
        if len(entries) == len(shards_windows) and all(shard_intact(storage, e) for e in entries):
            _say(progress and report is None, f"export: {storage.url()} already holds this export ({len(entries)} shards intact); reused")
            if report is not None:
                report["outcome"] = "complete"
            return existing
    locks = [export_lock(storage, out)]
    if out.startswith("s3://") or not _inside(spill_root, Path(out)):  # a spill folder another export may share
        locks.append(LocalLock(spill_root, "spill folder"))
    try:
        for lock in locks:
            lock.acquire()
        manifest = _export_locked(
            ds, enc, config, digest, storage, out, table, spec, spill_root, own_spill, shards_windows,
            overwrite, force, progress, engine, ray_address, workers, samples_per_shard, seed, shuffle, locks[0])
    finally:
        with interrupt.shielded():  # released whatever happens; a SIGTERM meanwhile is the caller's to act on
            for lock in reversed(locks):
                lock.release()
    if report is not None:
        report["outcome"] = "written"  # complete: the CLI keeps this outcome under a SIGTERM that came after it
    return manifest


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.absolute().relative_to(folder.absolute())
        return True
    except ValueError:
        return False


def _export_locked(ds: Any, enc: Encoding, config: dict[str, Any], digest: str, storage: Any, out: str, table: str,
                   spec: WindowSpec, spill_root: Path, own_spill: bool, shards_windows: list[np.ndarray],
                   overwrite: bool, force: bool, progress: bool, engine: str, ray_address: str | None, workers: int,
                   samples_per_shard: int, seed: int, shuffle: bool, lock: Any) -> dict[str, Any]:
    """The export proper, run while this process holds the output's lock."""
    n = len(ds)
    candidates: dict[str, dict[str, Any]] = {}
    existing, unusable = existing_manifest(storage)  # again: it may have changed before the lock was taken
    if existing is not None:
        if not unusable and existing.get("export_config_digest") == digest:
            candidates = {e["name"]: e for e in existing.get("shards", []) if isinstance(e, dict) and "name" in e}
        elif not overwrite:
            why = unusable or config_difference(existing.get("export_config"), config)
            raise WdspqError(
                f"{storage.url(MANIFEST_NAME)}: the output already holds an export and {why}; "
                "pass overwrite=True (wdspq export --overwrite) to replace it, or choose another output"
            )
    remove_staging(spill_root, storage)
    codec = tune_codec(ds, enc)  # after the reuse check: a finished export is returned without it
    if not force:  # also on a re-run: what is already spilled is space it will not need again
        est = estimate_export(ds, codec, samples_per_shard, out, spill_root, config["table"]["bytes"])
        problem = space_problem(credit_existing(est, spill_root))
        if problem:
            raise WdspqError(f"export: not enough space: {problem}; free some or pass force=True (--force)")
    if existing is not None:
        storage.delete(MANIFEST_NAME)  # from here on the folder is visibly an unfinished export

    spill_root.mkdir(parents=True, exist_ok=True)
    journal_path = spill_root / JOURNAL_NAME
    candidates.update(read_journal(journal_path, digest))

    state = {"ds": ds, "spill_root": str(spill_root), "storage": storage, "codec": codec}
    if engine == "ray":
        from .ray_engine import RayWorkers

        pool: Any = RayWorkers(state, ray_address)
    else:
        pool = Workers(workers, state)
    journal = Journal(journal_path, digest)
    aborted = True
    try:
        with interrupt.deferred():  # SIGTERM is acted on at safe points while the pools run
            # Phase 1: spill (chunk jobs, windows/s progress).
            # window -> chunk, offset and length in the spill files (16 bytes a window: the export's only
            # per-window memory besides the shard order's 4)
            loc_chunk, loc_off, loc_len = np.zeros(n, np.int32), np.zeros(n, np.int64), np.zeros(n, np.int32)
            frame_error = 0
            jobs = ((c, e0, min(e0 + EPISODES_PER_CHUNK, ds.num_episodes))
                    for c, e0 in enumerate(range(0, ds.num_episodes, EPISODES_PER_CHUNK)))
            with tqdm(total=n, desc="export: cut windows", unit="win", disable=not progress, smoothing=0.1) as bar:
                for res in pool.run(spill_chunk, jobs):
                    lock.check()  # an S3 lock taken over: stop before committing anything more
                    idx = res["index"]
                    loc_chunk[idx[:, 0]] = res["chunk"]
                    loc_off[idx[:, 0]], loc_len[idx[:, 0]] = idx[:, 1], idx[:, 2]
                    frame_error = max(frame_error, res["frame_error"])
                    bar.update(len(idx))
            stats = table_stats(table, ds.meta)  # every table row once, in table order

            # Phase 2: assemble shards, reusing those committed intact before.
            entries: list[dict[str, Any] | None] = [None] * len(shards_windows)
            todo: list[int] = []
            for i, wins in enumerate(shards_windows):
                prev = candidates.get(shard_name(i))
                if prev is not None and prev.get("samples") == len(wins) and shard_intact(storage, prev):
                    entries[i] = prev
                else:
                    todo.append(i)
            n_reused = len(shards_windows) - len(todo)
            if n_reused:
                _say(progress, f"export: reusing {n_reused} of {len(shards_windows)} shards written intact by an earlier run")
            reused = sum(len(shards_windows[i]) for i in range(len(shards_windows)) if entries[i] is not None)
            with tqdm(total=n, initial=reused, desc="export: write shards", unit="win", disable=not progress) as bar:
                def shard_job(i: int) -> tuple[int, np.ndarray, np.ndarray]:
                    w = shards_windows[i]
                    return i, w, np.stack([loc_chunk[w].astype(np.int64), loc_off[w], loc_len[w].astype(np.int64)], axis=1)

                def jobs2() -> Any:
                    for i in todo:
                        lock.check()  # no new shard commit once the lock was taken over
                        yield shard_job(i)

                for entry in pool.run(assemble_shard, jobs2(), io_threads=2):  # overlaps one shard's fsync with the next
                    lock.check()
                    entries[parse_shard_index(entry["name"])] = entry
                    journal.append(entry)
                    bar.update(entry["samples"])
            lock.check()
            aborted = False
    finally:
        journal.close()
        pool.close(abort=aborted)
        remove_staging(spill_root, storage, getattr(pool, "stopped", []))

    return finish_export(ds=ds, enc=enc, codec=codec, config=config, digest=digest, storage=storage, out=out,
                         table=table, spec=spec, spill_root=spill_root, own_spill=own_spill, entries=entries,
                         frame_error=frame_error, stats=stats, lock=lock)
