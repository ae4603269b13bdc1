"""The canonical episode table (schema version 1): Arrow schema, metadata, rates and an atomic writer.

One row per episode; see DESIGN.md "The table". The table-level metadata (format version, D, S, rates,
frame sizes) is JSON under the key `wdspq` of the Parquet file's key-value metadata (the footer), written
once all episodes are known. Validation of a whole table lives in `validate.py`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import SchemaError

FORMAT_VERSION = 1
META_KEY = b"wdspq"

COLUMNS = (
    "episode_id",
    "text",
    "action_ts",
    "actions",
    "observation_ts",
    "observations",
    "image",
    "video",
    "video_t0",
)


def table_schema(action_dim: int, obs_dim: int, meta: TableMeta | None = None) -> pa.Schema:
    """The Arrow schema of a version-1 table with D action and S observation dimensions."""
    fields = [
        pa.field("episode_id", pa.string(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("action_ts", pa.list_(pa.float64())),
        pa.field("actions", pa.list_(pa.list_(pa.float32(), action_dim))),
        pa.field("observation_ts", pa.list_(pa.float64())),
        pa.field("observations", pa.list_(pa.list_(pa.float32(), obs_dim))),
        pa.field("image", pa.binary(), nullable=True),
        pa.field("video", pa.binary(), nullable=True),
        pa.field("video_t0", pa.float64()),
    ]
    schema = pa.schema(fields)
    if meta is not None:
        schema = schema.with_metadata({META_KEY: meta.to_json().encode()})
    return schema


@dataclass
class TableMeta:
    """Table-level facts stored in the Parquet schema metadata under the key `wdspq`."""

    action_dim: int
    obs_dim: int
    action_rate_hz: float
    observation_rate_hz: float
    format_version: int = FORMAT_VERSION
    video_fps: float | None = None
    frame_height: int = 0
    frame_width: int = 0
    image_height: int = 0
    image_width: int = 0
    num_episodes: int = 0
    action_names: list[str] | None = None
    observation_names: list[str] | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "table") -> TableMeta:
        try:
            d = json.loads(text)
        except (ValueError, TypeError) as e:
            raise SchemaError(f"{where}: schema metadata 'wdspq' is not valid JSON: {e}") from None
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise SchemaError(
                f"{where}: table format version {version!r} is not supported (expected {FORMAT_VERSION})"
            )
        known = {f for f in cls.__dataclass_fields__}
        unknown = {k: v for k, v in d.items() if k not in known}
        d = {k: v for k, v in d.items() if k in known}
        d.setdefault("extra", {}).update(unknown)
        try:
            return cls(**d)
        except TypeError as e:
            raise SchemaError(f"{where}: schema metadata 'wdspq' is incomplete: {e}") from None


def read_meta(path: str | os.PathLike) -> TableMeta:
    """Read the wdspq metadata of a table file without reading its data."""
    path = Path(path)
    if not path.exists():
        raise SchemaError(f"{path}: table file does not exist")
    try:
        kv = pq.read_metadata(path).metadata or {}
    except (pa.ArrowInvalid, OSError) as e:
        raise SchemaError(f"{path}: not a readable Parquet file: {e}") from None
    raw = kv.get(META_KEY)
    if raw is None:
        raise SchemaError(
            f"{path}: no 'wdspq' schema metadata; build the table with `wdspq build` "
            "(a seed-layout table converts with `wdspq build seed`)"
        )
    return TableMeta.from_json(raw, where=str(path))


def median_rate(timestamp_lists: Iterable[np.ndarray], column: str = "timestamps") -> float:
    """`1 / median(diff(ts))` over the diffs of all episodes pooled (DESIGN.md "Rates")."""
    return _rate_from_diffs([np.diff(np.asarray(ts, dtype=np.float64)) for ts in timestamp_lists], column)


@dataclass
class Episode:
    """One episode in memory, the unit every builder produces."""

    episode_id: str
    text: str
    action_ts: np.ndarray  # (n_a,) float64
    actions: np.ndarray  # (n_a, D) float32
    observation_ts: np.ndarray  # (n_o,) float64
    observations: np.ndarray  # (n_o, S) float32
    image: bytes | None = None
    video: bytes | None = None
    video_t0: float = 0.0


def _fixed_list_column(arrays: Sequence[np.ndarray], dim: int) -> pa.Array:
    lengths = np.array([len(a) for a in arrays], dtype=np.int32)
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate([np.asarray(a, dtype=np.float32).reshape(-1) for a in arrays]) if arrays else np.zeros(0, np.float32)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), dim)
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), inner)


def _ts_column(arrays: Sequence[np.ndarray]) -> pa.Array:
    lengths = np.array([len(a) for a in arrays], dtype=np.int32)
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate([np.asarray(a, dtype=np.float64) for a in arrays]) if arrays else np.zeros(0)
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), pa.array(flat, type=pa.float64()))


def episodes_to_record_batch(episodes: Sequence[Episode], action_dim: int, obs_dim: int) -> pa.RecordBatch:
    """Convert episodes to one Arrow record batch of the version-1 schema (no Python loops per row of data)."""
    for ep in episodes:
        if ep.actions.ndim != 2 or ep.actions.shape[1] != action_dim:
            raise SchemaError(
                f"episode {ep.episode_id!r}, column 'actions': expected shape (n, {action_dim}), got {ep.actions.shape}"
            )
        if ep.observations.ndim != 2 or ep.observations.shape[1] != obs_dim:
            raise SchemaError(
                f"episode {ep.episode_id!r}, column 'observations': expected shape (n, {obs_dim}), "
                f"got {ep.observations.shape}"
            )
    schema = table_schema(action_dim, obs_dim)
    cols = [
        pa.array([ep.episode_id for ep in episodes], type=pa.string()),
        pa.array([ep.text for ep in episodes], type=pa.string()),
        _ts_column([ep.action_ts for ep in episodes]),
        _fixed_list_column([ep.actions for ep in episodes], action_dim),
        _ts_column([ep.observation_ts for ep in episodes]),
        _fixed_list_column([ep.observations for ep in episodes], obs_dim),
        pa.array([ep.image for ep in episodes], type=pa.binary()),
        pa.array([ep.video for ep in episodes], type=pa.binary()),
        pa.array([float(ep.video_t0) for ep in episodes], type=pa.float64()),
    ]
    return pa.RecordBatch.from_arrays(cols, schema=schema)


class TableWriter:
    """Write episodes in row groups to `<out>.tmp-<pid>`, then rename to `out` on `close()`.

    Memory stays bounded by one row group. Rates are computed from the timestamps seen, so the schema
    metadata (which Parquet stores in the footer) is complete when the file is finalised. On error or
    `abort()` the temporary file is removed, so no table ever appears half-written under its final name.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        action_dim: int,
        obs_dim: int,
        row_group_size: int = 32,
        meta_extra: dict[str, Any] | None = None,
    ) -> None:
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out.with_name(f".{self.out.name}.tmp-{os.getpid()}")
        self.action_dim, self.obs_dim = action_dim, obs_dim
        self.row_group_size = row_group_size
        self.meta_extra = dict(meta_extra or {})
        self._pending: list[Episode] = []
        self._action_diffs: list[np.ndarray] = []
        self._obs_diffs: list[np.ndarray] = []
        self._ids: set[str] = set()
        self.count = 0
        # Our metadata goes into the Parquet footer's key-value metadata at close, once rates are known.
        self._writer = pq.ParquetWriter(self.tmp, table_schema(action_dim, obs_dim), compression="zstd")

    def add(self, ep: Episode) -> None:
        if ep.episode_id in self._ids:
            raise SchemaError(f"episode {ep.episode_id!r}, column 'episode_id': duplicate id")
        self._ids.add(ep.episode_id)
        self._action_diffs.append(np.diff(ep.action_ts).astype(np.float64))
        self._obs_diffs.append(np.diff(ep.observation_ts).astype(np.float64))
        self._pending.append(ep)
        self.count += 1
        if len(self._pending) >= self.row_group_size:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            batch = episodes_to_record_batch(self._pending, self.action_dim, self.obs_dim)
            self._writer.write_table(pa.Table.from_batches([batch]), row_group_size=len(self._pending))
            self._pending = []

    def close(self, **meta_fields: Any) -> TableMeta:
        """Finish the file, store metadata (rates computed from all episodes) and rename into place."""
        try:
            self._flush()
            meta = TableMeta(
                action_dim=self.action_dim,
                obs_dim=self.obs_dim,
                action_rate_hz=_rate_from_diffs(self._action_diffs, "action_ts"),
                observation_rate_hz=_rate_from_diffs(self._obs_diffs, "observation_ts"),
                num_episodes=self.count,
                **meta_fields,
            )
            meta.extra.update(self.meta_extra)
            self._writer.add_key_value_metadata({META_KEY.decode(): meta.to_json()})
            self._writer.close()
            os.replace(self.tmp, self.out)
            return meta
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        try:
            self._writer.close()
        except Exception:
            pass
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def _rate_from_diffs(diffs: list[np.ndarray], column: str) -> float:
    diffs = [d for d in diffs if d.size]
    if not diffs:
        raise SchemaError(f"column {column!r}: cannot compute a rate, no episode has two timestamps")
    med = float(np.median(np.concatenate(diffs)))
    if not np.isfinite(med) or med <= 0:
        raise SchemaError(f"column {column!r}: median timestamp step is {med!r}; timestamps must increase")
    return 1.0 / med
