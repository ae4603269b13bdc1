"""`TableWriter`: episodes -> a version 2 table file, validated as they come and published atomically."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import SchemaError
from ..storage.base import commit_file
from .arrow import Episode, arrow_schema, check_episode, episodes_to_record_batch
from .meta import Stream, TableMeta, check_streams
from .rates import RatePool


class TableWriter:
    """Write episodes to a version 2 table at `out`, atomically, validating each episode as it comes.

    Row groups go to a hidden `.<out>.part-<pid>` file as they fill (memory: one row group plus at most
    MAX_RATE_DIFFS timestamp differences per stream for the rates). Rates are only known at the end and
    the metadata must live in the Arrow schema, so `close()` rewrites the part file row group by row
    group into `.<out>.tmp-<pid>` with the final schema and publishes it as `out` with the storage
    layer's atomic commit (`commit_file`: fsync, rename, fsync of the folder). On error or `abort()`
    both are removed: no table ever appears half-written under its final name. `overwrite=False`
    refuses an existing `out`. Every data page carries a CRC checksum, which every wdspq reader
    verifies (a flipped byte is an error).
    """

    def __init__(
        self,
        out: str | os.PathLike,
        streams: Sequence[Stream],
        row_group_size: int = 32,
        meta_extra: dict[str, Any] | None = None,
        overwrite: bool = True,
    ) -> None:
        self.out = Path(out)
        check_output_path(self.out, overwrite=overwrite)
        check_streams(streams)
        self.streams = list(streams)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.part = self.out.with_name(f".{self.out.name}.part-{os.getpid()}")
        self.tmp = self.out.with_name(f".{self.out.name}.tmp-{os.getpid()}")
        self.row_group_size = row_group_size
        self.meta_extra = dict(meta_extra or {})
        self._pending: list[Episode] = []
        self._rates: dict[str, RatePool] = {s.name: RatePool() for s in self.streams if s.timed}
        self._ids: set[str] = set()
        self.count = 0
        self.closed = False
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(
            self.part, arrow_schema(self.streams), compression="none", write_page_checksum=True)

    def add(self, ep: Episode) -> None:
        """Append one episode (checked against the streams; errors name the episode and stream)."""
        if ep.episode_id in self._ids:
            raise SchemaError(f"episode {ep.episode_id!r}, column 'episode_id': duplicate id")
        check_episode(ep, self.streams)
        self._ids.add(ep.episode_id)
        for s in self.streams:
            if s.kind == "actions":
                ts = ep.action_ts
            elif s.kind == "signal":
                ts = ep.signals[s.name][0]
            elif s.kind == "camera":
                ts = ep.cameras[s.name][1]
            else:
                continue
            self._rates[s.name].add(ts)
        self._pending.append(ep)
        self.count += 1
        if len(self._pending) >= self.row_group_size:
            self._flush()

    def _flush(self) -> None:
        if self._pending and self._writer is not None:
            batch = episodes_to_record_batch(self._pending, self.streams, check=False)
            self._writer.write_table(pa.Table.from_batches([batch]), row_group_size=len(self._pending))
            self._pending = []

    def close(self, source: str = "", extra: dict[str, Any] | None = None) -> TableMeta:
        """Finish: compute every stream's rate, write the final file with its metadata, rename into place."""
        try:
            if self.count == 0:
                raise SchemaError(f"{self.out}: no episodes were written")
            self._flush()
            assert self._writer is not None
            self._writer.close()
            self._writer = None
            streams = []
            for s in self.streams:
                if s.timed:
                    pool = self._rates[s.name]
                    if s.kind == "camera" and pool.empty:
                        rate = None  # no episode has two frames of this camera
                    else:
                        rate = pool.rate(s.ts_column or s.name)
                    s = replace(s, rate_hz=rate)
                streams.append(s)
            meta = TableMeta(streams=streams, num_episodes=self.count, source=source,
                             extra={**self.meta_extra, **(extra or {})})
            schema = arrow_schema(streams, meta)
            with pq.ParquetFile(self.part) as pf, pq.ParquetWriter(
                    self.tmp, schema, compression="zstd", write_page_checksum=True) as w:
                for g in range(pf.num_row_groups):
                    t = pf.read_row_group(g)
                    w.write_table(pa.Table.from_arrays(t.columns, schema=schema), row_group_size=t.num_rows)
            commit_file(self.tmp, self.out)
            self.part.unlink(missing_ok=True)
            self.closed = True
            return meta
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Remove everything this writer wrote; the final name is never touched."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:
                pass
            self._writer = None
        self.part.unlink(missing_ok=True)
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """An error aborts; a clean exit closes the table if `close()` was not called."""
        if exc_type is not None:
            self.abort()
        elif not self.closed:
            self.close()


def check_output_path(out: Path, overwrite: bool, inputs: Sequence[str | os.PathLike] = ()) -> None:
    """Refuse an output that is a folder, one of the inputs, or (without `overwrite`) an existing file."""
    if out.is_dir():
        raise SchemaError(f"{out}: is a folder; give the path of the table file to write (e.g. {out}/table.parquet)")
    for src in inputs:
        try:
            same = Path(src).exists() and out.exists() and os.path.samefile(src, out)
        except OSError:
            same = False
        if same or Path(src).resolve() == out.resolve():
            raise SchemaError(f"{out}: is also an input; write the table to another path (inputs are never overwritten)")
    if out.exists() and not overwrite:
        raise SchemaError(f"{out}: already exists; pass --overwrite (overwrite=True) to replace it")
