"""Validation of a whole table against its metadata (docs/table.md): schema version 2, and 1 read as 2.

`validate_table` reads one row group at a time (memory bounded by a row group) and checks every column
with vectorised numpy; only episodes that violate a rule are visited one by one, to name them. Every
violation names the file, the episode (id and row number) and the column. The per-episode timestamp
rule lives in `timestamps` (shared with the writer and the builders).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import MediaError, SchemaError, TableReadError
from ..media import decode_image, probe_clip
from .arrow import arrow_schema
from .file import is_remote, open_parquet, read_row_group
from .meta import TableMeta, read_meta
from .rates import RatePool
from .timestamps import not_increasing_message, timestamp_problem

MAX_REPORTED = 50  # violations kept in full on the error (the message shows the first)
RATE_TOLERANCE = 1e-3  # relative slack around the middle half of a stream's timestamp steps (_check_rates)
PER_CHECK = 5  # offending episodes named per check and row group


class _Report:
    """Collects violations; the first one becomes the error message, the rest are counted."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.messages: list[str] = []
        self.count = 0

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.messages) < MAX_REPORTED:
            self.messages.append(f"{self.path}: {message}")

    def episode(self, ep_id: object, row: int, column: str, what: str) -> None:
        self.add(f"episode {ep_id!r} (row {row}), column {column!r}: {what}")

    def raise_if_any(self) -> None:
        if not self.count:
            return
        msg = self.messages[0]
        if self.count > 1:
            msg += f" (and {self.count - 1} more violation{'s' if self.count > 2 else ''})"
        err = SchemaError(msg)
        err.violations = list(self.messages)  # type: ignore[attr-defined]
        raise err


def _offsets(lengths: np.ndarray) -> np.ndarray:
    off = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=off[1:])
    return off


def _rows_of(positions: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Row index of each flat position, given row offsets (vectorised)."""
    return np.searchsorted(offsets, positions, side="right") - 1


def _first_per_row(pos: np.ndarray, offsets: np.ndarray, skip: np.ndarray | None = None) -> list[tuple[int, int]]:
    """(first flat position, row) for the first few distinct rows holding a bad position (vectorised)."""
    rows = _rows_of(pos, offsets)
    uniq, first = np.unique(rows, return_index=True)
    if skip is not None:
        keep = ~skip[uniq]
        uniq, first = uniq[keep], first[keep]
    return [(int(pos[i]), int(r)) for i, r in zip(first[:PER_CHECK], uniq[:PER_CHECK])]


def _list_lengths(arr: pa.Array) -> np.ndarray:
    return pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _first_rows(mask: np.ndarray) -> Iterable[int]:
    return (int(r) for r in np.flatnonzero(mask)[:PER_CHECK])


def _check_nulls(arr: pa.Array, rep: _Report, ids: list, start: int, column: str, what: str) -> np.ndarray:
    nulls = arr.is_null().to_numpy(zero_copy_only=False)
    if nulls.any():
        for r in _first_rows(nulls):
            rep.episode(ids[r], start + r, column, what)
        rep.count += max(0, int(nulls.sum()) - PER_CHECK)
    return nulls


def _check_ts_column(
    arr: pa.Array, rep: _Report, ids: list, start: int, column: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nulls, emptiness, finiteness, strict increase. Returns (lengths, offsets, values)."""
    _check_nulls(arr, rep, ids, start, column, "is null; every episode needs timestamps")
    lengths = _list_lengths(arr)
    off = _offsets(lengths)
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    valid = ~arr.is_null().to_numpy(zero_copy_only=False)
    empty = (lengths == 0) & valid
    for r in _first_rows(empty):
        rep.episode(ids[r], start + r, column, "empty episode: no timestamps (every episode needs at least one row)")
    finite = np.isfinite(values)
    bad_rows = np.zeros(len(lengths), dtype=bool)
    if not finite.all():
        pos = np.flatnonzero(~finite)
        bad_rows[_rows_of(pos, off)] = True
        for p, r in _first_per_row(pos, off):
            rep.episode(ids[r], start + r, column, f"timestamp {p - off[r]} is {float(values[p])!r}; timestamps must be finite")
    if values.size > 1:
        d = np.diff(values)
        bad = ~(d > 0)
        bounds = off[1:-1]
        bad[bounds[(bounds > 0) & (bounds < values.size)] - 1] = False  # steps across rows are not steps
        bad &= finite[:-1] & finite[1:]
        if bad.any():
            for p, r in _first_per_row(np.flatnonzero(bad), off, skip=bad_rows):
                ts = values[off[r] : off[r + 1]]
                rep.episode(ids[r], start + r, column, not_increasing_message(ts, np.diff(ts), int(p - off[r])))
    return lengths, off, values


def _check_matrix_column(
    arr: pa.Array,
    rep: _Report,
    ids: list,
    start: int,
    column: str,
    ts_column: str,
    dim: int,
    dim_name: str,
    ts_lengths: np.ndarray | None,
) -> None:
    """A list<fixed_size_list<float32, dim>> (or a mistyped list<list<float>>): nulls, dims, lengths, NaN/inf."""
    nulls = _check_nulls(arr, rep, ids, start, column, "is null; every episode needs rows")
    lengths = _list_lengths(arr)
    if ts_lengths is not None:
        mismatch = (lengths != ts_lengths) & ~nulls
        for r in _first_rows(mismatch):
            rep.episode(
                ids[r], start + r, column, f"has {lengths[r]} rows but {ts_column!r} has {ts_lengths[r]} timestamps"
            )
    off = _offsets(lengths)
    items = arr.flatten()
    if items.null_count:
        pos = np.flatnonzero(items.is_null().to_numpy(zero_copy_only=False))
        for r in sorted(set(_rows_of(pos, off).tolist()))[:PER_CHECK]:
            rep.episode(ids[r], start + r, column, "has null rows")
        return
    if pa.types.is_fixed_size_list(items.type):
        item_dims = np.full(len(items), items.type.list_size, dtype=np.int64)
    else:
        item_dims = _list_lengths(items)
    wrong = item_dims != dim
    if wrong.any():
        for p, r in _first_per_row(np.flatnonzero(wrong), off):
            rep.episode(
                ids[r],
                start + r,
                column,
                f"row {p - off[r]} has {item_dims[p]} values, expected {dim} ({dim_name} in the table metadata)",
            )
        return
    vals = items.flatten().to_numpy(zero_copy_only=False)  # null values become NaN: reported as non-finite
    if vals.size == 0:
        return
    bad_items = ~np.isfinite(vals.reshape(-1, dim)).all(axis=1)
    if bad_items.any():
        for p, r in _first_per_row(np.flatnonzero(bad_items), off):
            row_vals = vals.reshape(-1, dim)[p]
            k = int(np.argmin(np.isfinite(row_vals)))
            rep.episode(
                ids[r], start + r, column, f"row {p - off[r]}, dimension {k} is {float(row_vals[k])!r}; values must be finite"
            )


def validate_table(path: str | os.PathLike, full_media: bool = False) -> TableMeta:
    """Check a table against its metadata (schema version 2, or version 1 read as 2); return the metadata.

    Raises SchemaError naming each violation (file, episode id and row, stream, column). Images are
    decoded; each clip's first frame is decoded and its frames counted (every frame decoded with
    `full_media`). One row group is read at a time.
    """
    path = os.fspath(path) if is_remote(path) else Path(path)  # s3://bucket/key read through the storage layer
    where = str(path)
    meta = read_meta(path)  # missing file, not Parquet, missing/invalid 'wdspq' metadata
    rep = _Report(where)
    for st in meta.streams:
        if st.timed and not (isinstance(st.rate_hz, (int, float)) and np.isfinite(st.rate_hz) and st.rate_hz > 0):
            if st.kind != "camera" or st.rate_hz is not None:
                rep.add(f"metadata 'wdspq': stream {st.name!r} rate is {st.rate_hz!r}, expected a positive finite rate")

    pf = open_parquet(path)  # page checksums are verified where the table has them
    schema = pf.schema_arrow
    expected = arrow_schema(meta.streams)
    ok: set[str] = set()
    deferred: list[str] = []
    names = set(schema.names)
    owner = {c: st for st in meta.streams for c in (st.column, st.ts_column, st.t0_column) if c}
    seed_like = "action_ts" not in names and "actions" in names and _is_seed_matrix(schema.field("actions").type)
    for f in expected:
        label = f"column {f.name!r}" + (f" (stream {owner[f.name].name!r})" if f.name in owner and owner[f.name].name != f.name else "")
        if f.name not in names:
            if f.name == "split":
                continue  # optional
            hint = (
                "; this looks like a seed-layout table (timestamps in column 0, media as paths): "
                "convert it with `wdspq build seed`"
                if seed_like
                else ""
            )
            rep.add(f"{label}: missing (expected type {f.type}){hint}")
            continue
        got = schema.field(f.name).type
        if got.equals(f.type):
            ok.add(f.name)
            continue
        st = owner.get(f.name)
        if st is not None and st.kind in ("actions", "signal") and f.name == st.column and _is_float_matrix(got):
            size = got.value_type.list_size if pa.types.is_fixed_size_list(got.value_type) else None
            if size is not None and got.value_type.value_type == pa.float32():
                rep.add(f"{label}: dimension {size} does not match the width {st.width} of stream {st.name!r} in the table metadata")
            else:
                deferred.append(f"{label}: wrong type {got}, expected {f.type}")
                ok.add(f.name + ":loose")
            continue
        rep.add(f"{label}: wrong type {got}, expected {f.type}")
    if meta.read_as == 1:
        for col, kind in (("video", "camera"), ("image", "image")):
            if col in names and not meta.of_kind(kind) and _nulls(pf, col) < pf.metadata.num_rows:
                rep.add(f"column {col!r}: holds media but the table metadata describes no {kind} (no frame size); "
                        "rebuild the table with `wdspq build`")

    if "episode_id" not in ok:
        for m in deferred:
            rep.add(m)
        rep.raise_if_any()  # cannot name episodes without ids

    seen_ids: dict[str, int] = {}
    start = 0
    read_cols = [c for c in expected.names if c in ok or c + ":loose" in ok]
    rates = {st.name: RatePool() for st in meta.streams if st.ts_column and st.ts_column in ok}
    for g in range(pf.num_row_groups):
        try:
            tbl = read_row_group(pf, path, g, read_cols)
        except TableReadError as e:
            rep.add(str(e).removeprefix(f"{where}: "))
            start += pf.metadata.row_group(g).num_rows
            rates.clear()  # the rates cannot be derived without every timestamp
            continue
        n = tbl.num_rows
        col = _columns(tbl)
        _pool_timestamps(meta, rates, col)
        ids = col("episode_id").to_pylist()
        for r, ep_id in enumerate(ids):
            if ep_id is None:
                rep.add(f"row {start + r}, column 'episode_id': is null")
            elif ep_id in seen_ids:
                rep.episode(ep_id, start + r, "episode_id", f"duplicate id (first at row {seen_ids[ep_id]})")
            else:
                seen_ids[ep_id] = start + r
        if "text" in ok:
            _check_nulls(col("text"), rep, ids, start, "text", "is null; use an empty string for no task text")
        for st in meta.streams:
            if st.kind in ("actions", "signal"):
                ts_len = _check_ts_column(col(st.ts_column), rep, ids, start, st.ts_column)[0] if st.ts_column in ok else None
                if st.column in ok or st.column + ":loose" in ok:
                    _check_matrix_column(col(st.column), rep, ids, start, st.column, st.ts_column, st.width,
                                         f"the width of stream {st.name!r}", ts_len)
            elif st.kind == "camera" and st.column in ok:
                _check_camera(st, col, ok, rep, ids, start, n, full_media)
            elif st.kind == "image" and st.column in ok:
                for r, data in enumerate(col(st.column).to_pylist()):
                    if data is None:
                        continue
                    try:
                        img = decode_image(data)
                    except MediaError as e:
                        rep.episode(ids[r], start + r, st.column, f"undecodable image: {_short(e)}")
                        continue
                    if (img.shape[1], img.shape[2]) != st.hw:
                        rep.episode(ids[r], start + r, st.column, f"size {img.shape[1]}x{img.shape[2]} differs from "
                                    f"{st.height}x{st.frame_width} (the image size in the table metadata)")
        start += n
        del tbl
    for m in deferred:
        rep.add(m)
    if start == 0:
        rep.add("the table has no episodes")
    _check_rates(meta, rates, rep)
    rep.raise_if_any()
    return meta


def _pool_timestamps(meta: TableMeta, rates: dict[str, RatePool], col: Callable[[str], pa.Array]) -> None:
    """Add one row group's timestamps, episode by episode, to each stream's rate pool (as the builder does)."""
    for st in meta.streams:
        pool = rates.get(st.name)
        if pool is None:
            continue
        arr = col(st.ts_column)
        off = _offsets(_list_lengths(arr))
        values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        for r in range(len(off) - 1):
            pool.add(values[off[r] : off[r + 1]])


def _check_rates(meta: TableMeta, rates: dict[str, RatePool], rep: _Report) -> None:
    """Each stream's stored `rate_hz` against the rate its timestamps give by the builder's rule.

    Metadata edited by hand (100 -> 50 Hz) would otherwise silently change every window's length. The
    stored rate passes when it equals the derived one, or when its step lies within the middle half
    (25th-75th percentile, RATE_TOLERANCE slack) of the pooled steps: a filtered table (pyarrow read ->
    filter -> write keeps the metadata) of jittered frames moves the median step a little.
    """
    for st in meta.streams:
        pool = rates.get(st.name)
        if pool is None or pool.empty:
            continue  # a camera with no two frames anywhere has no rate (None)
        try:
            derived = pool.rate(st.ts_column or st.name)
        except SchemaError:
            continue  # already reported as a timestamp violation
        stored = st.rate_hz
        if not (isinstance(stored, (int, float)) and stored > 0 and np.isfinite(stored)):
            continue  # reported with the metadata checks
        if stored == derived:
            continue
        lo, hi = np.percentile(np.concatenate(pool.diffs), [25, 75])
        if lo * (1 - RATE_TOLERANCE) <= 1.0 / stored <= hi * (1 + RATE_TOLERANCE):
            continue
        rep.add(
            f"metadata 'wdspq': stream {st.name!r} has rate_hz {stored!r}, but its timestamps "
            f"({st.ts_column!r}) give {derived:g} Hz; the metadata was edited or does not belong to "
            "this table: rebuild it (or restore the rate)"
        )


def _nulls(pf, column: str) -> int:
    """Null count of a whole column (0 when it cannot be read: the row-group pass names that)."""
    try:
        return pf.read(columns=[column]).column(0).null_count
    except (pa.ArrowException, OSError):
        return 0


def _check_camera(st, col, ok: set[str], rep: _Report, ids: list, start: int, n: int, full: bool) -> None:
    """One camera in one row group: clips decode, have the metadata's frame size, one timestamp per frame."""
    clips = col(st.column).to_pylist()
    has = np.array([c is not None for c in clips], dtype=bool)
    ts_len = None
    if st.ts_column is not None and st.ts_column in ok:
        arr = col(st.ts_column)
        ts_len = _list_lengths(arr)
        off = _offsets(ts_len)
        values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        for r in range(n):
            if not has[r]:
                if ts_len[r]:
                    rep.episode(ids[r], start + r, st.ts_column, f"has {ts_len[r]} frame timestamps but the episode has no clip")
                continue
            problem = timestamp_problem(values[off[r] : off[r + 1]])
            if problem:
                rep.episode(ids[r], start + r, st.ts_column, problem)
    if st.t0_column is not None and st.t0_column in ok:
        t0 = col(st.t0_column).to_numpy(zero_copy_only=False).astype(np.float64)
        for r in _first_rows(~np.isfinite(t0) & has):
            rep.episode(ids[r], start + r, st.t0_column, f"is {float(t0[r])!r}; the clip's start time must be finite")
    for r, data in enumerate(clips):
        if data is None:
            continue
        try:
            h, w, fps, frames = probe_clip(data, full)
        except Exception as e:  # PyAV raises many types on bad bytes
            rep.episode(ids[r], start + r, st.column, f"undecodable video ({len(data)} bytes): {_short(e)}")
            continue
        if (h, w) != st.hw:
            rep.episode(ids[r], start + r, st.column,
                        f"size {h}x{w} differs from {st.height}x{st.frame_width} (the frame size of camera {st.name!r} in the table metadata)")
        if ts_len is not None and ts_len[r] and frames != ts_len[r]:
            rep.episode(ids[r], start + r, st.column,
                        f"the clip has {frames} frames but {st.ts_column!r} has {ts_len[r]} timestamps (one per frame)")
        if st.fps and abs(fps - st.fps) > 1e-6 * st.fps:
            rep.episode(ids[r], start + r, st.column, f"clip is {fps:g} fps, metadata video_fps is {st.fps:g}")


def _columns(tbl: pa.Table) -> Callable[[str], pa.Array]:
    return lambda c: tbl.column(c).combine_chunks()


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text if len(text) < 200 else text[:197] + "..."


def _is_float_matrix(t: pa.DataType) -> bool:
    if not pa.types.is_list(t) and not pa.types.is_large_list(t):
        return False
    inner = t.value_type
    if not (pa.types.is_list(inner) or pa.types.is_fixed_size_list(inner) or pa.types.is_large_list(inner)):
        return False
    return pa.types.is_floating(inner.value_type)


def _is_seed_matrix(t: pa.DataType) -> bool:
    return _is_float_matrix(t) and not pa.types.is_fixed_size_list(t.value_type)
