"""Import a local LeRobot dataset folder (codebase version v2.0, v2.1 or v3.0) into the canonical table.

Nothing is downloaded: point at a folder (e.g. one from the Hugging Face cache). The layout is read
from `meta/info.json` (its `codebase_version`, `fps`, `features` and path templates), never assumed.

Mapping (docs/importers.md):
- `action` -> the `actions` stream; every other float feature (`observation.state`, ...) -> a signal
  stream of the same name (multi-dimensional features are flattened); index columns and non-float
  features (`next.done`, ...) are skipped and listed in the table's metadata;
- every `image` feature -> a camera of the same name; frame i is the episode's row i and carries that
  row's timestamp;
- every `video` feature -> a camera of the same name whose frames keep their own times (pts x time_base
  minus the episode's `from_timestamp`: the episode's clock, as LeRobot's decoder sees them); a frame
  within `SNAP_S` of a row's timestamp takes that timestamp exactly. A clip with more or fewer frames
  than the episode has rows (a dropped or extra frame) is imported as it is, with a warning and a note in
  the table's extra["lerobot"]["frames_off_rows"]; windows then match frames by time (`tolerance_s`);
- the episode's task(s) -> `text` (several tasks joined by "; " in order of first appearance); an episode
  whose rows change task also keeps its runs of rows per task (`task_runs`), so a window gets the task of
  its anchor row, as LeRobot gives each frame its own row's task;
- `info.json` `splits` ("train": "0:80") -> the `split` column.

Timestamps are the rows' `timestamp` values in float64; where they equal float32(frame_index / fps), as
LeRobot writes them, the float64 frame_index / fps is kept (the time LeRobot meant, without the float32
rounding). Video is decoded with PyAV and re-encoded one clip per episode and camera: FFV1 (lossless:
the table's frames equal the decoded source frames exactly) by default, or H.264 (lossy, ~10x smaller).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from ..errors import MediaError, SchemaError
from ..media import check_video_codec, decode_image, is_lossless, iter_timed_range
from ..table import (
    Episode,
    Stream,
    TableMeta,
    TableWriter,
    actions_stream,
    camera_stream,
    check_output_path,
    signal_stream,
)
from .common import encode_frames, select, split_of

SNAP_S = 1e-4  # LeRobot's default tolerance_s: a frame this close to a row's timestamp is that row's frame
VERSIONS = {"v2.0": 2, "v2.1": 2, "v3.0": 3}
INDEX_COLUMNS = {"timestamp", "frame_index", "episode_index", "index", "task_index"}
FLOAT_DTYPES = {"float16", "float32", "float64"}


@dataclass
class _Video:
    path: Path
    start: float = 0.0  # from_timestamp inside a multi-episode (v3) file
    end: float | None = None


@dataclass
class _EpisodeRef:
    """Where one episode lives: its rows (data file) and, per camera, its video file and time range."""

    index: int
    length: int
    data_path: Path
    videos: dict[str, _Video] = field(default_factory=dict)


def _rel(root: Path, p: Path) -> str:
    try:
        return str(p.relative_to(root))
    except ValueError:
        return str(p)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise SchemaError(f"{path}: cannot read: {e.strerror or e}") from None
    except ValueError as e:
        raise SchemaError(f"{path}: not valid JSON: {e}") from None


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise SchemaError(f"{path}: not found (a LeRobot v2 dataset lists its episodes and tasks there)")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError as e:
                raise SchemaError(f"{path}, line {n}: not valid JSON: {e}") from None
    return out


def read_info(root: str | os.PathLike) -> tuple[dict[str, Any], int]:
    """`meta/info.json` and the layout generation (2 or 3); refuses folders and versions it cannot read."""
    root = Path(root)
    if not root.is_dir():
        raise SchemaError(f"{root}: not a folder; give the LeRobot dataset folder (the one holding meta/info.json)")
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise SchemaError(f"{root}: not a LeRobot dataset (no meta/info.json)")
    info = _json(info_path)
    version = info.get("codebase_version") if isinstance(info, dict) else None
    if version not in VERSIONS:
        raise SchemaError(
            f"{info_path}: codebase_version {version!r} is not one wdspq reads ({', '.join(VERSIONS)}); "
            "convert it with LeRobot's own conversion script first"
        )
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise SchemaError(f"{info_path}: has no {key!r} (codebase_version {version})")
    return info, VERSIONS[version]


def _hw(name: str, feat: dict[str, Any]) -> tuple[int, int]:
    shape, names = list(feat.get("shape") or []), feat.get("names")
    if len(shape) != 3:
        raise SchemaError(f"meta/info.json: feature {name!r} ({feat.get('dtype')}): shape {shape} is not (H, W, C)")
    if isinstance(names, list) and len(names) == 3 and all(isinstance(n, str) for n in names):
        lower = [n.lower() for n in names]
        if "height" in lower and "width" in lower:
            return int(shape[lower.index("height")]), int(shape[lower.index("width")])
    return (int(shape[1]), int(shape[2])) if shape[0] in (1, 3) and shape[2] not in (1, 3) else (int(shape[0]), int(shape[1]))


def _dim_names(feat: dict[str, Any], width: int) -> list[str] | None:
    names = feat.get("names")
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    if isinstance(names, list) and len(names) == width and all(isinstance(n, str) for n in names):
        return names
    return None


def plan_streams(info: dict[str, Any], video_codec: str = "ffv1") -> tuple[list[Stream], dict[str, str], list[str]]:
    """(streams, camera name -> "video"|"image", skipped feature names) from info.json's features."""
    feats: dict[str, Any] = info["features"]
    if "action" not in feats:
        raise SchemaError(f"meta/info.json: no 'action' feature (features: {', '.join(sorted(feats))})")
    streams: list[Stream] = []
    cameras: dict[str, str] = {}
    skipped: list[str] = []
    for name, feat in feats.items():
        dtype = feat.get("dtype")
        width = int(np.prod(feat.get("shape") or [1]))
        if name == "action":
            if dtype not in FLOAT_DTYPES:
                raise SchemaError(f"meta/info.json: feature 'action' has dtype {dtype!r}, expected a float dtype")
            streams.insert(0, actions_stream(width, _dim_names(feat, width)))
        elif dtype in ("video", "image"):
            cameras[name] = dtype
            streams.append(camera_stream(name, *_hw(name, feat), codec=video_codec, lossless=is_lossless(video_codec)))
        elif dtype in FLOAT_DTYPES and name not in INDEX_COLUMNS:
            streams.append(signal_stream(name, width, _dim_names(feat, width)))
        elif name not in INDEX_COLUMNS:
            skipped.append(name)
    return streams, cameras, skipped


def _splits(info: dict[str, Any]) -> dict[str, range]:
    """info.json's `splits` ({"train": "0:80", ...}: ranges of episode indices) as ranges."""
    out = {}
    for name, rng in (info.get("splits") or {}).items():
        lo, _, hi = str(rng).partition(":")
        try:
            out[str(name)] = range(int(lo), int(hi))
        except ValueError:
            raise SchemaError(f"meta/info.json: split {name!r} is {rng!r}, expected 'START:STOP'") from None
    return out


def _episodes_v2(root: Path, info: dict[str, Any], cameras: dict[str, str]) -> tuple[list[_EpisodeRef], dict[int, list[str]]]:
    chunk = int(info.get("chunks_size") or 1000)
    refs, tasks = [], {}
    for row in _jsonl(root / "meta" / "episodes.jsonl"):
        i = int(row["episode_index"])
        keys = {"episode_chunk": i // chunk, "episode_index": i}
        videos = {k: _Video(root / info["video_path"].format(video_key=k, **keys))
                  for k, kind in cameras.items() if kind == "video"}
        refs.append(_EpisodeRef(i, int(row["length"]), root / info["data_path"].format(**keys), videos))
        tasks[i] = list(row.get("tasks") or [])
    return refs, tasks


def _episodes_v3(root: Path, info: dict[str, Any], cameras: dict[str, str]) -> tuple[list[_EpisodeRef], dict[int, list[str]]]:
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise SchemaError(f"{root}: no meta/episodes/chunk-*/file-*.parquet (a LeRobot v3.0 dataset lists its episodes there)")
    refs, tasks = [], {}
    for f in files:
        for row in pq.read_table(f).to_pylist():
            try:
                i = int(row["episode_index"])
                data = root / info["data_path"].format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
                videos = {}
                for k, kind in cameras.items():
                    if kind == "video":
                        p = info["video_path"].format(video_key=k, chunk_index=row[f"videos/{k}/chunk_index"],
                                                      file_index=row[f"videos/{k}/file_index"])
                        videos[k] = _Video(root / p, float(row[f"videos/{k}/from_timestamp"]),
                                           float(row[f"videos/{k}/to_timestamp"]))
                refs.append(_EpisodeRef(i, int(row["length"]), data, videos))
                tasks[i] = list(row.get("tasks") or [])
            except KeyError as e:
                raise SchemaError(f"{f}: episode row has no column {e.args[0]!r}") from None
    return refs, tasks


def _task_names(root: Path, generation: int) -> dict[int, str]:
    """task_index -> task sentence (meta/tasks.jsonl for v2, meta/tasks.parquet for v3)."""
    if generation == 2:
        return {int(r["task_index"]): str(r["task"]) for r in _jsonl(root / "meta" / "tasks.jsonl")}
    path = root / "meta" / "tasks.parquet"
    if not path.is_file():
        raise SchemaError(f"{path}: not found (a LeRobot v3.0 dataset lists its tasks there)")
    t = pq.read_table(path)
    text_cols = [c for c in t.column_names if pa.types.is_string(t.schema.field(c).type) or pa.types.is_large_string(t.schema.field(c).type)]
    col = "task" if "task" in text_cols else (text_cols[0] if text_cols else None)  # pandas keeps its index as a column
    if col is None or "task_index" not in t.column_names:
        raise SchemaError(f"{path}: expected a task_index column and the task strings, found {t.column_names}")
    return dict(zip(map(int, t.column("task_index").to_pylist()), map(str, t.column(col).to_pylist())))


def _matrix(table: pa.Table, name: str, where: str) -> np.ndarray:
    """A (possibly nested) list column -> (n, width) float32; a scalar column -> (n, 1)."""
    arr = table.column(name).combine_chunks()
    if arr.null_count:
        raise SchemaError(f"{where}: feature {name!r} has {arr.null_count} null rows")
    while pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type) or pa.types.is_large_list(arr.type):
        arr = arr.flatten()
    values = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float32)
    return values.reshape(table.num_rows, -1)


class _DataFiles:
    """Reads each data file once (v3 files hold many episodes; episodes come in file order)."""

    def __init__(self, root: Path) -> None:
        self.root, self.path, self.table = root, None, None

    def rows(self, ref: _EpisodeRef) -> pa.Table:
        if ref.data_path != self.path:
            if not ref.data_path.is_file():
                raise SchemaError(f"episode {ref.index}: data file {_rel(self.root, ref.data_path)} not found")
            self.table, self.path = pq.read_table(ref.data_path), ref.data_path
        t = self.table
        assert t is not None
        if "episode_index" in t.column_names:
            t = t.filter(pc.equal(t.column("episode_index"), ref.index))
        if "frame_index" in t.column_names:
            t = t.sort_by("frame_index")
        return t


def _timestamps(rows: pa.Table, fps: float, where: str) -> np.ndarray:
    if "timestamp" not in rows.column_names:
        raise SchemaError(f"{where}: no 'timestamp' column")
    ts = np.asarray(rows.column("timestamp").to_numpy(zero_copy_only=False))
    if "frame_index" in rows.column_names:
        exact = np.asarray(rows.column("frame_index").to_numpy(), dtype=np.float64) / float(fps)
        if ts.dtype == np.float32 and np.array_equal(ts, exact.astype(np.float32)):
            return exact
    return ts.astype(np.float64)


def _image_frames(rows: pa.Table, root: Path, name: str, where: str) -> Iterator[np.ndarray]:
    """The (H, W, 3) frames of a `dtype: image` feature, decoded one row at a time."""
    for j, cell in enumerate(rows.column(name).to_pylist()):
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if not data and isinstance(cell, dict) and cell.get("path"):
            data = (root / cell["path"]).read_bytes()
        if not data:
            raise SchemaError(f"{where}, image {name!r}: row {j} has no image bytes")
        yield decode_image(data, f"{where}, image {name!r}, row {j}").transpose(1, 2, 0)


def _episode_text(listed: list[str], rows: pa.Table, names: dict[int, str]) -> str:
    """The episode's tasks as listed in its metadata, else those of its rows' task_index in order of first
    appearance; several are joined by "; "."""
    tasks = listed
    if not tasks and "task_index" in rows.column_names:
        tasks = [names.get(int(t), "") for t in dict.fromkeys(rows.column("task_index").to_pylist())]
    return "; ".join(t for t in tasks if t)


class FramesOffRowsWarning(UserWarning):
    """A camera's video has more or fewer frames than its episode has rows, or frames off the rows' times."""


def camera_times(frame_t: np.ndarray, row_ts: np.ndarray) -> np.ndarray:
    """Each decoded frame's own time on the episode's clock; one within `SNAP_S` of a row's timestamp takes
    that timestamp exactly (frames on their rows import with the rows' times, bit for bit)."""
    from ..offsets import rows_at

    out = np.asarray(frame_t, dtype=np.float64).copy()
    if len(row_ts) and len(out):
        near, ok = rows_at(np.asarray(row_ts, dtype=np.float64), out, SNAP_S)
        out[ok] = row_ts[near[ok]]
    return out


def _timed(frames: Iterable[tuple[float, np.ndarray]], start: float, times: list[float]) -> Iterator[np.ndarray]:
    """The frames of (time, frame) pairs, their times minus `start` appended to `times` on the way."""
    for t, f in frames:
        times.append(t - start)
        yield f


def task_runs(rows: pa.Table, names: dict[int, str]) -> list[list[Any]] | None:
    """[[first row, task_index, task], ...] for an episode whose rows carry more than one task_index, else None."""
    if "task_index" not in rows.column_names or rows.num_rows == 0:
        return None
    ti = np.asarray(rows.column("task_index").to_numpy(zero_copy_only=False), dtype=np.int64)
    starts = np.flatnonzero(np.concatenate([[True], ti[1:] != ti[:-1]]))
    if len(starts) == 1:
        return None
    return [[int(r), int(ti[r]), names.get(int(ti[r]), "")] for r in starts]


def read_episode(
    root: Path, ref: _EpisodeRef, rows: pa.Table, streams: list[Stream], cameras: dict[str, str],
    fps: float, text: str, split: str | None, video_codec: str, off_rows: dict[str, Any] | None = None,
) -> Episode:
    """One LeRobot episode (its data-file `rows`) -> Episode; errors name the episode and the file. A video
    whose frames are not one per row (count or times) is noted in `off_rows` (camera -> counts)."""
    where = f"episode {ref.index} ({_rel(root, ref.data_path)})"
    if rows.num_rows != ref.length:
        raise SchemaError(f"{where}: the episode metadata says {ref.length} frames, the data file has {rows.num_rows} rows")
    ts = _timestamps(rows, fps, where)
    signals: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    cams: dict[str, tuple[bytes | None, np.ndarray]] = {}
    actions = None
    for s in streams:
        if s.kind in ("actions", "signal"):
            col = "action" if s.kind == "actions" else s.name
            if col not in rows.column_names:
                raise SchemaError(f"{where}: no column {col!r} (info.json lists it as a feature)")
            vals = _matrix(rows, col, where)
            if s.kind == "actions":
                actions = vals
            else:
                signals[s.name] = (ts, vals)
            continue
        cwhere = f"{where}, camera {s.name!r}"
        times: list[float] | None = None
        if cameras[s.name] == "image":
            frames: Iterable[np.ndarray] = _image_frames(rows, root, s.name, where)
            src = "data file"
        else:
            v = ref.videos[s.name]
            if not v.path.is_file():
                raise SchemaError(f"episode {ref.index}, camera {s.name!r}: {_rel(root, v.path)}: video file not found")
            times = []
            frames = _timed(iter_timed_range(str(v.path), v.start, v.end, fps,
                                             where=f"episode {ref.index}, camera {s.name!r}: {_rel(root, v.path)}"),
                            v.start, times)
            src = f"video {_rel(root, v.path)}" + (f" between {v.start:.3f} s and {v.end:.3f} s" if v.end is not None else "")
        try:
            clip = encode_frames(frames, s.hw, video_codec, fps, None if times is not None else ref.length,
                                 cwhere, src, "info.json")
        except MediaError as e:  # the decoder's error already names the episode, camera, file and codec
            raise SchemaError(str(e)) from None
        cam_ts = ts if times is None else camera_times(np.array(times, dtype=np.float64), ts)
        if times is not None and (len(cam_ts) != len(ts) or not np.array_equal(cam_ts, ts)):
            on_rows = int(np.isin(cam_ts, ts).sum())
            if off_rows is not None:
                off_rows[s.name] = {"frames": len(cam_ts), "rows": len(ts), "frames_on_rows": on_rows}
        cams[s.name] = (clip, cam_ts)
    assert actions is not None
    return Episode(episode_id=f"episode_{ref.index:06d}", text=text, action_ts=ts, actions=actions,
                   signals=signals, cameras=cams, split=split)


def build_from_lerobot(
    root: str | os.PathLike,
    out: str | os.PathLike,
    episodes: Iterable[int] | None = None,
    split: str | None = None,
    video_codec: str = "ffv1",
    progress: bool = True,
    overwrite: bool = True,
) -> TableMeta:
    """Import the LeRobot dataset folder `root` (optionally only `episodes` / one `split`) into a table at `out`."""
    check_video_codec(video_codec, SchemaError)
    root = Path(root)
    info, generation = read_info(root)
    check_output_path(Path(out), overwrite=overwrite)
    streams, cameras, skipped = plan_streams(info, video_codec)
    if any(kind == "video" for kind in cameras) and "video_path" not in info:
        raise SchemaError(f"{root / 'meta' / 'info.json'}: has video features but no 'video_path' template")
    refs, ep_tasks = (_episodes_v2 if generation == 2 else _episodes_v3)(root, info, cameras)
    by_index = {r.index: r for r in refs}
    splits = _splits(info)
    chosen = select(list(by_index), episodes, split, splits, where=str(root))
    names = _task_names(root, generation)
    stats, stats_source = lerobot_stats_of(root, chosen)
    keys = {s.name: ("action" if s.kind == "actions" else s.name) for s in streams}
    extra = {"lerobot": {"codebase_version": info["codebase_version"], "fps": info["fps"],
                         "robot_type": info.get("robot_type"), "skipped_features": skipped,
                         "episodes": len(chosen), "of_episodes": len(refs),
                         "stats": stats, "stats_source": stats_source, "keys": keys,
                         "tasks": [names[t] for t in sorted(names)], "episodes_by_id": {}, "frames_off_rows": {}}}
    starts = dict(zip(sorted(by_index), np.cumsum([0] + [by_index[j].length for j in sorted(by_index)]).tolist()))
    files = _DataFiles(root)
    fps = float(info["fps"])
    with TableWriter(out, streams, row_group_size=8, overwrite=overwrite) as writer:
        for i in tqdm(chosen, desc=f"import {root.name}", unit="ep", disable=not progress):
            ref = by_index[i]
            rows = files.rows(ref)  # filtered and sorted once per episode
            text = _episode_text(ep_tasks.get(i) or [], rows, names)
            index_from = int(rows.column("index")[0].as_py()) if "index" in rows.column_names and rows.num_rows else starts[i]
            extra["lerobot"]["episodes_by_id"][f"episode_{i:06d}"] = {"episode_index": i, "index_from": index_from}
            runs = task_runs(rows, names)
            if runs is not None:
                extra["lerobot"]["episodes_by_id"][f"episode_{i:06d}"]["task_runs"] = runs
            off: dict[str, Any] = {}
            writer.add(read_episode(root, ref, rows, streams, cameras, fps, text, split_of(i, splits), video_codec, off))
            if off:
                extra["lerobot"]["frames_off_rows"][f"episode_{i:06d}"] = off
        off_rows = extra["lerobot"]["frames_off_rows"]
        if off_rows:
            warnings.warn(FramesOffRowsWarning(
                f"{root}: in {len(off_rows)} episode(s) a camera's frames are not one per row (dropped, extra or "
                f"jittered frames; e.g. {next(iter(off_rows))}: {next(iter(off_rows.values()))}); they keep their own "
                "times and windows match them by time within tolerance_s (table extra['lerobot']['frames_off_rows'])"),
                stacklevel=2)
        else:
            del extra["lerobot"]["frames_off_rows"]
        return writer.close(source=f"lerobot {info['codebase_version']} {root}", extra=extra)


def lerobot_stats_of(root: str | os.PathLike, episodes: Iterable[int]) -> tuple[dict[str, Any] | None, str | None]:
    """LeRobot's per-feature statistics: meta/stats.json as written (the whole dataset's), else the entries
    of meta/episodes_stats.jsonl (v2.1) for `episodes` pooled as LeRobot pools them (count-weighted mean and
    variance); give every episode index for the whole file's pool, as LeRobot's dataset metadata has it."""
    root = Path(root)
    path = root / "meta" / "stats.json"
    if path.is_file():
        return _json(path), "meta/stats.json"
    path = root / "meta" / "episodes_stats.jsonl"
    if not path.is_file():
        return None, None
    chosen = set(episodes)
    per = [r["stats"] for r in _jsonl(path) if int(r.get("episode_index", -1)) in chosen and r.get("stats")]
    out: dict[str, Any] = {}
    for key in sorted({k for st in per for k in st}):
        items = [st[key] for st in per if key in st and all(f in st[key] for f in ("mean", "std", "min", "max"))]
        if not items:
            continue
        c = np.array([np.asarray(st.get("count", [1]), np.float64).reshape(-1)[0] for st in items])
        mean = [np.asarray(st["mean"], np.float64) for st in items]
        m = sum(ci * mi for ci, mi in zip(c, mean)) / c.sum()
        var = sum(ci * (np.asarray(st["std"], np.float64) ** 2 + (mi - m) ** 2) for ci, st, mi in zip(c, items, mean)) / c.sum()
        out[key] = {"mean": m.tolist(), "std": np.sqrt(var).tolist(), "count": [int(c.sum())],
                    "min": np.min([np.asarray(st["min"], np.float64) for st in items], axis=0).tolist(),
                    "max": np.max([np.asarray(st["max"], np.float64) for st in items], axis=0).tolist()}
    return out, "meta/episodes_stats.jsonl"

