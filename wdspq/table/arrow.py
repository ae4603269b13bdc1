"""Episodes in memory and as Arrow: the `Episode` every builder produces, the version 2 Arrow schema,
episodes -> record batches (checked: shapes, finite values, the timestamp rule) and one row's list cell
back to numpy (what the episode source reads).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ..errors import SchemaError
from .meta import KINDS, META_KEY, Stream, TableMeta
from .timestamps import check_timestamps


@dataclass
class Episode:
    """One episode in memory, the unit every builder produces (streams by name).

    `signals[name] = (ts, values (n, S))`, `cameras[name] = (clip bytes or None, ts (n_frames,))`,
    `images[name] = bytes or None`.
    """

    episode_id: str
    text: str
    action_ts: np.ndarray  # (n_a,) float64
    actions: np.ndarray  # (n_a, D) float32
    signals: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    cameras: dict[str, tuple[bytes | None, np.ndarray]] = field(default_factory=dict)
    images: dict[str, bytes | None] = field(default_factory=dict)
    split: str | None = None


def arrow_schema(streams: Sequence[Stream], meta: TableMeta | None = None) -> pa.Schema:
    """The Arrow schema of a version 2 table with these streams (metadata attached when given)."""
    fields = [pa.field("episode_id", pa.string(), nullable=False), pa.field("text", pa.string()),
              pa.field("split", pa.string())]
    for s in streams:
        if s.kind in ("actions", "signal"):
            fields += [pa.field(s.ts_column, pa.list_(pa.float64())),
                       pa.field(s.column, pa.list_(pa.list_(pa.float32(), s.width)))]
        elif s.kind == "camera":
            fields.append(pa.field(s.column, pa.binary()))
            if s.ts_column:
                fields.append(pa.field(s.ts_column, pa.list_(pa.float64())))
            else:  # version 1: constant-rate clip starting at t0_column
                fields.append(pa.field(s.t0_column, pa.float64()))
        else:
            fields.append(pa.field(s.column, pa.binary()))
    schema = pa.schema(fields)
    if meta is not None:
        schema = schema.with_metadata({META_KEY: meta.to_json().encode()})
    return schema


def _offsets(arrays: Sequence[np.ndarray]) -> pa.Array:
    off = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([len(a) for a in arrays], out=off[1:])
    return pa.array(off, type=pa.int32())


def _fixed_list_column(arrays: Sequence[np.ndarray], dim: int) -> pa.Array:
    flat = np.concatenate([np.asarray(a, dtype=np.float32).reshape(-1) for a in arrays]) if arrays else np.zeros(0, np.float32)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), dim)
    return pa.ListArray.from_arrays(_offsets(arrays), inner)


def _ts_column(arrays: Sequence[np.ndarray]) -> pa.Array:
    flat = np.concatenate([np.asarray(a, dtype=np.float64) for a in arrays]) if arrays else np.zeros(0)
    return pa.ListArray.from_arrays(_offsets(arrays), pa.array(flat, type=pa.float64()))


def check_episode(ep: Episode, streams: Sequence[Stream]) -> None:
    """Names the episode and stream of any shape, dtype or naming problem before it is written."""
    where = f"episode {ep.episode_id!r}"
    by_kind = {k: {s.name for s in streams if s.kind == k} for k in KINDS}
    for kind, given in (("signal", ep.signals), ("camera", ep.cameras), ("image", ep.images)):
        if set(given) != by_kind[kind]:
            raise SchemaError(
                f"{where}: {kind} streams {sorted(given)} differ from the table's {sorted(by_kind[kind])}"
            )
    for s in streams:
        if s.kind in ("actions", "signal"):
            ts, vals = (ep.action_ts, ep.actions) if s.kind == "actions" else ep.signals[s.name]
            vals, ts = np.asarray(vals), np.asarray(ts)
            if vals.ndim != 2 or vals.shape[1] != s.width:
                raise SchemaError(f"{where}, stream {s.name!r}: expected shape (n, {s.width}), got {vals.shape}")
            if ts.ndim != 1 or len(ts) != len(vals):
                raise SchemaError(f"{where}, stream {s.name!r}: {len(vals)} rows but {ts.size} timestamps")
            if not np.isfinite(vals).all():
                raise SchemaError(f"{where}, stream {s.name!r}: NaN or infinite values")
        elif s.kind == "camera":
            clip, ts = ep.cameras[s.name]
            if clip is None:
                if len(ts):
                    raise SchemaError(f"{where}, camera {s.name!r}: {len(ts)} frame timestamps but no clip")
                continue
            if not isinstance(clip, (bytes, bytearray)):
                raise SchemaError(f"{where}, camera {s.name!r}: the clip must be encoded bytes, got {type(clip).__name__}")
        else:
            continue
        check_timestamps(np.asarray(ts, dtype=np.float64), f"{where}, stream {s.name!r}")


def episodes_to_record_batch(
    episodes: Sequence[Episode], streams: Sequence[Stream], check: bool = True
) -> pa.RecordBatch:
    """Episodes -> one Arrow record batch of the version 2 schema (vectorised per column).

    `check=False` skips the per-episode checks (TableWriter already ran them in `add`)."""
    if check:
        for ep in episodes:
            check_episode(ep, streams)
    cols = [pa.array([ep.episode_id for ep in episodes], type=pa.string()),
            pa.array([ep.text for ep in episodes], type=pa.string()),
            pa.array([ep.split for ep in episodes], type=pa.string())]
    for s in streams:
        if s.kind in ("actions", "signal"):
            pairs = [(ep.action_ts, ep.actions) if s.kind == "actions" else ep.signals[s.name] for ep in episodes]
            cols += [_ts_column([p[0] for p in pairs]), _fixed_list_column([p[1] for p in pairs], s.width)]
        elif s.kind == "camera":
            cols += [pa.array([ep.cameras[s.name][0] for ep in episodes], type=pa.binary()),
                     _ts_column([np.asarray(ep.cameras[s.name][1], dtype=np.float64) for ep in episodes])]
        else:
            cols.append(pa.array([ep.images[s.name] for ep in episodes], type=pa.binary()))
    return pa.RecordBatch.from_arrays(cols, schema=arrow_schema(streams))


def list_to_numpy(col: pa.ChunkedArray | pa.Array, dim: int | None, dtype: np.dtype) -> np.ndarray:
    """One row's list<...> cell -> numpy, without Python loops (flatten twice for fixed-size lists)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    flat = arr.flatten()
    if dim is not None:
        flat = flat.flatten()
    out = flat.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return out.reshape(-1, dim) if dim is not None else out
