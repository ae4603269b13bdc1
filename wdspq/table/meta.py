"""The canonical episode table (schema version 2): named streams, their metadata, rates and the writer.

One row per episode (docs/table.md). An episode holds exactly one `actions` stream (the anchor), zero or
more signal streams, cameras (one encoded clip plus one timestamp per frame) and images, a task text,
an `episode_id` and an optional `split`. The table-level metadata is JSON under the key `wdspq` of the
Arrow *schema* metadata, so an ordinary pyarrow read -> filter -> write keeps a valid table. Version 1
tables are read as version 2 (`observations` signal, `frames` camera, `image` image).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import SchemaError, WdspqError
from ..windows import SampleLayout
from .rates import median_rate, rate_from_diffs, snap_rate  # noqa: F401  (the rate rules live in rates.py)
from .timestamps import check_timestamps

FORMAT_VERSION = 2
META_KEY = b"wdspq"
KINDS = ("actions", "signal", "camera", "image")
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.]*$")
# Sample keys and table columns that no stream may take (README "The sample").
MAX_RATE_DIFFS = 1 << 20  # timestamp differences a TableWriter pools per stream to find its rate (8 MiB)
RESERVED = frozenset(
    {"text", "episode_id", "split", "input_ids", "attention_mask", "token_type_ids", "window_index",
     "episode_index", "anchor_index", "t0"}
)


@dataclass(frozen=True)
class Stream:
    """One named stream of a table: its kind, columns, width (D or S) or frame size, and rate.

    `rate_hz` is filled in by the writer from the timestamps (snapped, see `snap_rate`). Version 1 clips
    have no per-frame timestamp column: `ts_column` is None and `t0_column`/`fps` give the constant-rate times.
    """

    name: str
    kind: str
    column: str = ""
    ts_column: str | None = None
    width: int = 0  # D or S for actions/signal streams
    height: int = 0  # frame or image height (camera/image)
    frame_width: int = 0
    rate_hz: float | None = None
    names: list[str] | None = None  # optional dimension names
    codec: str | None = None  # camera clip codec as built (informational)
    lossless: bool | None = None
    t0_column: str | None = None  # version 1 clips only
    fps: float | None = None  # version 1 clips only

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SchemaError(f"stream {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if not isinstance(self.name, str) or not NAME_RE.match(self.name):
            raise SchemaError(f"stream name {self.name!r} must match {NAME_RE.pattern}")
        if not self.column:
            object.__setattr__(self, "column", self.name)
        if self.ts_column is None and self.kind in ("signal", "camera") and self.t0_column is None:
            object.__setattr__(self, "ts_column", f"{self.name}_ts")
        if self.kind == "actions" and self.ts_column is None:
            object.__setattr__(self, "ts_column", "action_ts")
        if self.kind in ("actions", "signal"):
            if int(self.width) < 1:
                raise SchemaError(f"stream {self.name!r} ({self.kind}): width must be >= 1, got {self.width}")
            if self.names is not None and len(self.names) != self.width:
                raise SchemaError(f"stream {self.name!r}: {len(self.names)} dimension names for width {self.width}")
        if self.kind in ("camera", "image") and (int(self.height) < 1 or int(self.frame_width) < 1):
            raise SchemaError(
                f"stream {self.name!r} ({self.kind}): frame size {self.height}x{self.frame_width} (HxW); "
                "give the height and width of its frames"
            )

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.height), int(self.frame_width)

    @property
    def timed(self) -> bool:
        return self.kind != "image"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def actions_stream(width: int, names: Sequence[str] | None = None) -> Stream:
    """The anchor stream `actions` (columns `actions`, `action_ts`)."""
    return Stream("actions", "actions", width=int(width), names=list(names) if names else None)


def signal_stream(name: str, width: int, names: Sequence[str] | None = None) -> Stream:
    """An observation stream `name` (columns `name`, `name_ts`)."""
    return Stream(name, "signal", width=int(width), names=list(names) if names else None)


def camera_stream(name: str, height: int, width: int, codec: str | None = None, lossless: bool | None = None) -> Stream:
    """A camera `name`: one encoded clip per episode (column `name`) and its frame times (`name_ts`)."""
    return Stream(name, "camera", height=int(height), frame_width=int(width), codec=codec, lossless=lossless)


def image_stream(name: str, height: int, width: int) -> Stream:
    """A still image `name` per episode (PNG or JPEG bytes, nullable)."""
    return Stream(name, "image", height=int(height), frame_width=int(width))


@dataclass
class TableMeta:
    """Table-level facts stored under the key `wdspq`: format version, streams, episode count, source."""

    streams: list[Stream]
    num_episodes: int = 0
    source: str = ""
    format_version: int = FORMAT_VERSION
    read_as: int = FORMAT_VERSION  # the version of the file this was read from (1 for upgraded-on-read tables)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_streams(self.streams)

    # -- access by kind ----------------------------------------------------------------------------
    @property
    def actions(self) -> Stream:
        return next(s for s in self.streams if s.kind == "actions")

    def of_kind(self, kind: str) -> list[Stream]:
        return [s for s in self.streams if s.kind == kind]

    @property
    def signals(self) -> list[Stream]:
        return self.of_kind("signal")

    @property
    def cameras(self) -> list[Stream]:
        return self.of_kind("camera")

    @property
    def images(self) -> list[Stream]:
        return self.of_kind("image")

    def stream(self, name: str) -> Stream:
        for s in self.streams:
            if s.name == name:
                return s
        raise SchemaError(f"the table has no stream {name!r} (streams: {', '.join(s.name for s in self.streams)})")

    def layout(self) -> SampleLayout:
        """What this table contributes to every sample (widths, rates, frame sizes), for the window function."""
        return SampleLayout(
            action_dim=self.actions.width,
            action_rate_hz=float(self.actions.rate_hz or 0.0),
            signals=tuple((s.name, s.width, float(s.rate_hz or 0.0)) for s in self.signals),
            cameras=tuple((s.name, *s.hw, s.rate_hz) for s in self.cameras),
            images=tuple((s.name, *s.hw) for s in self.images),
        )

    def columns(self) -> list[str]:
        """Every column the metadata describes, in table order."""
        out = ["episode_id", "text"]
        for s in self.streams:
            out += [c for c in (s.ts_column, s.column, s.t0_column) if c and c not in out]
        return out

    # -- JSON --------------------------------------------------------------------------------------
    def to_json(self) -> str:
        d = {"format_version": FORMAT_VERSION, "num_episodes": self.num_episodes, "source": self.source,
             "streams": [s.to_dict() for s in self.streams], "extra": self.extra}
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "table") -> TableMeta:
        try:
            d = json.loads(text)
        except (ValueError, TypeError) as e:
            raise SchemaError(f"{where}: schema metadata 'wdspq' is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise SchemaError(f"{where}: schema metadata 'wdspq' is not a JSON object")
        version = d.get("format_version")
        if version == 1:
            return _from_v1(d, where)
        if version != FORMAT_VERSION:
            raise SchemaError(f"{where}: table format version {version!r} is not supported (this wdspq reads 1 and 2)")
        try:
            streams = [Stream(**s) for s in d["streams"]]
            return cls(streams=streams, num_episodes=int(d.get("num_episodes", 0)), source=str(d.get("source", "")),
                       extra=dict(d.get("extra") or {}))
        except (KeyError, TypeError) as e:
            raise SchemaError(f"{where}: schema metadata 'wdspq' is incomplete: {e}") from None
        except SchemaError as e:
            raise SchemaError(f"{where}: {e}") from None


def check_streams(streams: Sequence[Stream]) -> None:
    """Exactly one actions stream; names, columns and the sample keys they make are unique and not reserved."""
    n_actions = sum(s.kind == "actions" for s in streams)
    if n_actions != 1:
        raise SchemaError(f"a table has exactly one 'actions' stream, these streams have {n_actions}")
    keys: dict[str, str] = {}
    for s in streams:
        made = [s.name, f"{s.name}_mask"] + ([f"{s.name}_ts"] if s.kind == "camera" else [])
        cols = [c for c in (s.column, s.ts_column, s.t0_column) if c]
        for k in {*made, *cols}:
            if k in RESERVED:
                raise SchemaError(f"stream {s.name!r}: {k!r} is reserved (it names a table column or sample key)")
            if k in keys and keys[k] != s.name:
                raise SchemaError(f"streams {keys[k]!r} and {s.name!r} both use the name {k!r}")
            keys[k] = s.name


def _from_v1(d: Mapping[str, Any], where: str) -> TableMeta:
    """A version 1 metadata dict read as version 2: signal `observations`, camera `frames`, image `image`."""
    try:
        streams = [
            Stream("actions", "actions", width=int(d["action_dim"]), rate_hz=float(d["action_rate_hz"]),
                   names=d.get("action_names")),
            Stream("observations", "signal", column="observations", ts_column="observation_ts",
                   width=int(d["obs_dim"]), rate_hz=float(d["observation_rate_hz"]), names=d.get("observation_names")),
        ]
        if int(d.get("frame_height") or 0) > 0:
            fps = d.get("video_fps")
            streams.append(Stream("frames", "camera", column="video", ts_column=None, t0_column="video_t0",
                                  height=int(d["frame_height"]), frame_width=int(d["frame_width"]),
                                  fps=float(fps) if fps else None, rate_hz=float(fps) if fps else None))
        if int(d.get("image_height") or 0) > 0:
            streams.append(Stream("image", "image", height=int(d["image_height"]), frame_width=int(d["image_width"])))
    except (KeyError, TypeError, ValueError) as e:
        raise SchemaError(f"{where}: version 1 schema metadata 'wdspq' is incomplete: {e}") from None
    return TableMeta(streams=streams, num_episodes=int(d.get("num_episodes", 0)), source=str(d.get("source", "")),
                     read_as=1, extra=dict(d.get("extra") or {}))


def read_meta(path: str | os.PathLike) -> TableMeta:
    """Read the wdspq metadata of a table file without reading its data (v1 tables are read as v2)."""
    from .file import is_remote, open_table

    if not is_remote(path):
        path = Path(path)
        if path.is_dir():
            raise SchemaError(f"{path}: is a folder, expected a table file (.parquet)")
        if not path.exists():
            raise SchemaError(f"{path}: table file does not exist")
    try:
        pf = pq.ParquetFile(open_table(path))
    except WdspqError as e:
        raise SchemaError(f"{path}: cannot read the table: {e}") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise SchemaError(f"{path}: not a readable Parquet file: {e}") from None
    raw = (pf.schema_arrow.metadata or {}).get(META_KEY)
    if raw is None:  # version 1 tables keep it in the Parquet footer's key-value metadata only
        raw = (pf.metadata.metadata or {}).get(META_KEY)
    if raw is None:
        raise SchemaError(
            f"{path}: no 'wdspq' schema metadata; build the table with `wdspq build` "
            "(a seed-layout table converts with `wdspq build seed`)"
        )
    return TableMeta.from_json(raw, where=str(path))


# ---------------------------------------------------------------------------------------------------
# episodes and Arrow


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


def _check_episode(ep: Episode, streams: Sequence[Stream]) -> None:
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
            _check_episode(ep, streams)
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


class RatePool:
    """One stream's timestamp steps pooled over episodes for its rate, in bounded memory.

    Beyond MAX_RATE_DIFFS steps the pool is thinned to every other value and later episodes alike
    (deterministic), so `TableWriter` and `validate_table` derive the same rate from the same table.
    """

    def __init__(self) -> None:
        self.diffs: list[np.ndarray] = []
        self.keep = 1  # every k-th step of an episode is pooled
        self.count = 0  # steps in the pool
        self.max_abs_ts = 0.0

    def add(self, ts: np.ndarray) -> None:
        """Pool the steps of one episode's timestamps."""
        ts = np.asarray(ts, dtype=np.float64)
        d = np.diff(ts)[:: self.keep]
        self.diffs.append(d)
        self.count += len(d)
        if self.count > MAX_RATE_DIFFS:
            self.diffs = [np.concatenate(self.diffs)[::2]]
            self.count = len(self.diffs[0])
            self.keep *= 2
        if ts.size:
            self.max_abs_ts = max(self.max_abs_ts, float(np.abs(ts).max()))

    @property
    def empty(self) -> bool:
        return not any(d.size for d in self.diffs)

    def rate(self, column: str) -> float:
        """The stream's rate by the table rule (`rate_from_diffs`)."""
        return rate_from_diffs(self.diffs, column, self.max_abs_ts)


class TableWriter:
    """Write episodes to a version 2 table at `out`, atomically, validating each episode as it comes.

    Row groups go to a hidden `.<out>.part-<pid>` file as they fill (memory: one row group plus at most
    MAX_RATE_DIFFS timestamp differences per stream for the rates). Rates are only known at the end and the metadata must live in the Arrow
    schema, so `close()` rewrites the part file row group by row group into `.<out>.tmp-<pid>` with the
    final schema, fsyncs it and renames it to `out`. On error or `abort()` both are removed: no table
    ever appears half-written under its final name. `overwrite=False` refuses an existing `out`. Every
    data page carries a CRC checksum, which every wdspq reader verifies (a flipped byte is an error).
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
        _check_episode(ep, self.streams)
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
            _fsync_path(self.tmp)
            os.replace(self.tmp, self.out)
            _fsync_path(self.out.parent)
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


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
