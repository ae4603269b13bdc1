"""The canonical episode table's metadata (schema version 2): named streams, `TableMeta`, `read_meta`.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import SchemaError, WdspqError
from ..windows import SampleLayout

FORMAT_VERSION = 2
META_KEY = b"wdspq"
KINDS = ("actions", "signal", "camera", "image")
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.]*$")
# Sample keys and table columns that no stream may take (README "The sample").
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
