"""Convert HDF5 robot logs (one file = one episode) into the canonical table (schema version 2).

The default layout is the seed's: one dataset per sample, named by its integer timestamp in nanoseconds,
under `hand/right/policy_output` (actions), `right/franka/end_effector_pose` (signal `observations`) and
`oakd_front_view/color` (camera `frames`, (H, W, 3) uint8); the task sentence is `task_description`.
More signal streams and cameras come from the layout (`signals`, `cameras`: name -> group). Every
timestamp becomes float64 seconds rounded once from the exact nanoseconds (never via float32); camera
frames keep their own timestamps (a dropped frame stays a gap, nothing is re-timed). Clips are FFV1
(lossless) by default; `video_codec="h264"` is ~10x smaller and lossy (yuv420p, max error ~100 on
coloured edges).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from ..errors import SchemaError
from ..media import check_video_codec, is_lossless
from ..table import (
    Episode,
    TableMeta,
    TableWriter,
    actions_stream,
    camera_stream,
    check_output_path,
    signal_stream,
)
from ..table.rates import median_rate
from ..table.timestamps import check_timestamps
from .common import encode_camera, select

_INT_NAME = re.compile(r"^[+-]?\d+$")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")


@dataclass
class Hdf5Layout:
    """Where an episode's streams live inside an HDF5 file. An empty/None group or text disables that part.

    `observations_group` and `frames_group` are the seed's signal `observations` and camera `frames`;
    `signals` and `cameras` add more streams (name -> group).
    """

    actions_group: str = "hand/right/policy_output"
    observations_group: str | None = "right/franka/end_effector_pose"
    frames_group: str | None = "oakd_front_view/color"
    signals: dict[str, str] = field(default_factory=dict)
    cameras: dict[str, str] = field(default_factory=dict)
    text_dataset: str | None = "task_description"
    video_codec: str = "ffv1"

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Hdf5Layout:
        """Read a layout file: a JSON object with any of the field names above."""
        try:
            d = json.loads(Path(path).read_text())
        except OSError as e:
            raise SchemaError(f"{path}: cannot read layout file: {e.strerror or e}") from None
        except ValueError as e:
            raise SchemaError(f"{path}: layout file is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise SchemaError(f"{path}: layout file must hold a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SchemaError(f"{path}: unknown layout keys {unknown}; known keys: {sorted(known)}")
        for k in ("signals", "cameras"):
            if k in d and not (isinstance(d[k], dict) and all(isinstance(v, str) for v in d[k].values())):
                raise SchemaError(f"{path}: layout key {k!r} must map stream names to HDF5 group paths")
        return cls().replace(**d)

    def replace(self, **changes: Any) -> Hdf5Layout:
        """A copy with the given fields changed (None values are ignored, so CLI flags can override)."""
        d = asdict(self)
        d.update({k: v for k, v in changes.items() if v is not None})
        for k in ("observations_group", "frames_group", "text_dataset"):
            if d[k] == "":
                d[k] = None
        check_video_codec(d["video_codec"], SchemaError)
        return Hdf5Layout(**d)

    def signal_groups(self) -> dict[str, str]:
        return {**({"observations": self.observations_group} if self.observations_group else {}), **self.signals}

    def camera_groups(self) -> dict[str, str]:
        return {**({"frames": self.frames_group} if self.frames_group else {}), **self.cameras}


def ns_to_seconds(ns: Sequence[int] | np.ndarray) -> np.ndarray:
    """Integer nanoseconds -> float64 seconds, each the float64 nearest the exact value.

    `np.float64(ns) / 1e9` rounds twice (ns itself is not exact in float64 above 2**53); Python's int / int
    division is correctly rounded, so each timestamp is rounded exactly once.
    """
    values = ns.tolist() if isinstance(ns, np.ndarray) else list(ns)
    return np.array([int(n) / 1_000_000_000 for n in values], dtype=np.float64)


def _seconds(ns: list[int], where: str) -> np.ndarray:
    """Sorted, distinct ns -> float64 seconds, refusing stamps that float64 cannot tell apart."""
    ts = ns_to_seconds(ns)
    try:
        check_timestamps(ts, where)
    except SchemaError as e:
        raise SchemaError(
            f"{e}; the nanosecond stamps differ but are closer than float64 resolution at this epoch "
            f"(about {np.spacing(abs(ts[-1])) * 1e9:.0f} ns)"
        ) from None
    return ts


def _timed_datasets(f: h5py.File, group: str, where: str, role: str) -> tuple[list[int], list[h5py.Dataset]]:
    """The datasets of a group named by integer ns timestamps, sorted by timestamp (not by name)."""
    obj = f.get(group)
    if obj is None:
        top = ", ".join(sorted(f.keys())[:10])
        raise SchemaError(
            f"{where}: group {group!r} ({role}) not found (top-level entries: {top or 'none'}); "
            "set the group path with a layout file or a --*-group flag"
        )
    if not isinstance(obj, h5py.Group):
        raise SchemaError(f"{where}: {group!r} ({role}) is a dataset, expected a group of per-timestamp datasets")
    stamps: list[tuple[int, str]] = []
    for name in obj.keys():
        if not _INT_NAME.match(name):
            raise SchemaError(
                f"{where}: dataset {group}/{name} ({role}): name is not an integer timestamp in nanoseconds"
            )
        stamps.append((int(name), name))
    if not stamps:
        raise SchemaError(f"{where}: group {group!r} ({role}) is empty")
    stamps.sort()
    for (n0, name0), (n1, name1) in zip(stamps, stamps[1:]):
        if n0 == n1:
            raise SchemaError(f"{where}: datasets {group}/{name0} and {group}/{name1} ({role}) have the same timestamp")
    out = []
    for _, name in stamps:
        ds = obj[name]
        if not isinstance(ds, h5py.Dataset):
            raise SchemaError(f"{where}: {group}/{name} ({role}) is a group, expected a dataset")
        out.append(ds)
    return [s for s, _ in stamps], out


def _read_vectors(datasets: list[h5py.Dataset], where: str, role: str) -> np.ndarray:
    """Each dataset holds one sample vector; all must have the same size."""
    first = np.asarray(datasets[0][()])
    dim = first.size
    out = np.empty((len(datasets), dim), dtype=np.float32)
    for i, ds in enumerate(datasets):
        v = np.asarray(ds[()])
        if v.size != dim:
            raise SchemaError(
                f"{where}: dataset {ds.name} ({role}) has {v.size} values, the first ({datasets[0].name}) has {dim}"
            )
        if not np.issubdtype(v.dtype, np.number):
            raise SchemaError(f"{where}: dataset {ds.name} ({role}) has dtype {v.dtype}, expected numbers")
        out[i] = v.reshape(-1)
    if dim == 0:
        raise SchemaError(f"{where}: dataset {datasets[0].name} ({role}) is empty")
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        raise SchemaError(f"{where}: dataset {datasets[int(np.argmax(bad))].name} ({role}) has NaN or infinite values")
    return out


def _read_frames(datasets: list[h5py.Dataset], where: str) -> np.ndarray:
    first = datasets[0]
    if first.ndim != 3 or first.shape[2] != 3 or first.dtype != np.uint8:
        raise SchemaError(
            f"{where}: dataset {first.name} (frames): shape {first.shape} dtype {first.dtype}, expected (H, W, 3) uint8"
        )
    frames = np.empty((len(datasets), *first.shape), dtype=np.uint8)
    for i, ds in enumerate(datasets):
        if ds.shape != first.shape or ds.dtype != np.uint8:
            raise SchemaError(
                f"{where}: frames of varying size: dataset {ds.name} is {ds.shape} {ds.dtype}, the first frame "
                f"({first.name}) is {first.shape} uint8"
            )
        ds.read_direct(frames, dest_sel=np.s_[i])
    return frames


def _read_text(f: h5py.File, name: str, where: str) -> str:
    obj = f.get(name)
    if obj is None or not isinstance(obj, h5py.Dataset):
        raise SchemaError(
            f"{where}: text dataset {name!r} not found; set it with --text-dataset (or '' for no text)"
        )
    value = obj[()]
    if isinstance(value, np.ndarray):
        if value.size == 0:
            return ""
        value = value.reshape(-1)[0]
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def read_hdf5_episode(
    path: str | os.PathLike, layout: Hdf5Layout, episode_id: str
) -> tuple[Episode, dict[str, Any]]:
    """One HDF5 file -> (Episode, shapes: {stream: width or (H, W)}). Errors name the file and group/dataset."""
    where = str(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise SchemaError(f"{where}: not a readable HDF5 file: {e}") from None
    shapes: dict[str, Any] = {}
    with f:
        a_ns, a_ds = _timed_datasets(f, layout.actions_group, where, "actions")
        action_ts = _seconds(a_ns, f"{where}: group {layout.actions_group!r}")
        actions = _read_vectors(a_ds, where, "actions")
        shapes["actions"] = actions.shape[1]
        signals = {}
        for name, group in layout.signal_groups().items():
            ns, ds = _timed_datasets(f, group, where, f"signal {name!r}")
            signals[name] = (_seconds(ns, f"{where}: group {group!r}"), _read_vectors(ds, where, f"signal {name!r}"))
            shapes[name] = signals[name][1].shape[1]
        text = _read_text(f, layout.text_dataset, where) if layout.text_dataset else ""
        cameras = {}
        for name, group in layout.camera_groups().items():
            f_ns, f_ds = _timed_datasets(f, group, where, f"camera {name!r}")
            frame_ts = _seconds(f_ns, f"{where}: group {group!r}")
            frames = _read_frames(f_ds, where)
            clip = encode_camera(frames, layout.video_codec, _nominal_fps(frame_ts, group), f"{where}: group {group!r} (camera {name!r})")
            cameras[name] = (clip, frame_ts)
            shapes[name] = (int(frames.shape[1]), int(frames.shape[2]))
            del frames
    ep = Episode(episode_id=episode_id, text=text, action_ts=action_ts, actions=actions, signals=signals, cameras=cameras)
    return ep, shapes


def _nominal_fps(ts: np.ndarray, column: str) -> int:
    """The container's nominal frame rate, the table's rate rule rounded (informational; the table keeps
    every frame's own time)."""
    if len(ts) < 2:
        return 30
    return max(1, int(round(median_rate([ts], column))))


def expand_inputs(files: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given, folders expanded to their HDF5 files (sorted); missing paths are an error listing them."""
    out: list[Path] = []
    missing: list[str] = []
    for item in files:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix.lower() in HDF5_SUFFIXES and q.is_file())
            if not found:
                raise SchemaError(f"{p}: folder holds no HDF5 files ({', '.join(HDF5_SUFFIXES)})")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            missing.append(str(p))
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise SchemaError(f"HDF5 input not found: {', '.join(missing[:5])}{more}")
    if not out:
        raise SchemaError("no HDF5 input files given")
    return out


def _episode_ids(paths: list[Path]) -> list[str]:
    """File stems, made unique with a numeric suffix when two files share a stem."""
    used: set[str] = set()
    ids = []
    for p in paths:
        candidate, n = p.stem, 1
        while candidate in used:
            n += 1
            candidate = f"{p.stem}-{n}"
        used.add(candidate)
        ids.append(candidate)
    return ids


def build_from_hdf5(
    files: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    layout: Hdf5Layout | None = None,
    row_group_size: int = 8,
    progress: bool = True,
    overwrite: bool = True,
    episodes: Iterable[int] | None = None,
) -> TableMeta:
    """Convert HDF5 logs (one file per episode; folders are expanded) to a version 2 table at `out`, atomically.

    `episodes` keeps only those positions among the inputs (files as given, folders expanded sorted)."""
    layout = layout or Hdf5Layout()
    paths = expand_inputs(files)
    check_output_path(Path(out), overwrite=overwrite, inputs=paths)
    ids = _episode_ids(paths)
    if episodes is not None:
        keep = select(list(range(len(paths))), episodes, where=f"{len(paths)} HDF5 files")
        paths, ids = [paths[i] for i in keep], [ids[i] for i in keep]
    writer: TableWriter | None = None
    first: tuple[Path, dict[str, Any]] | None = None
    try:
        for path, ep_id in tqdm(list(zip(paths, ids)), desc=f"build {Path(out).name}", unit="ep", disable=not progress):
            ep, shapes = read_hdf5_episode(path, layout, ep_id)
            if first is None:
                first = (path, shapes)
                streams = [actions_stream(shapes["actions"])]
                streams += [signal_stream(n, shapes[n]) for n in layout.signal_groups()]
                lossless = is_lossless(layout.video_codec)
                streams += [camera_stream(n, *shapes[n], codec=layout.video_codec, lossless=lossless)
                            for n in layout.camera_groups()]
                writer = TableWriter(out, streams, row_group_size=row_group_size, overwrite=overwrite)
            elif shapes != first[1]:
                diff = sorted(k for k in shapes if shapes[k] != first[1].get(k))
                raise SchemaError(
                    f"{path}: stream {diff[0]!r} has shape {_shape_text(shapes[diff[0]])}, the first file's "
                    f"({first[0]}) has {_shape_text(first[1][diff[0]])}; every episode needs one width and frame size per stream"
                )
            assert writer is not None
            writer.add(ep)
        assert writer is not None
        return writer.close(source=f"hdf5({len(paths)} files, layout={json.dumps(asdict(layout), sort_keys=True)})")
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


def _shape_text(shape: Any) -> str:
    return f"{shape[0]}x{shape[1]} (HxW) frames" if isinstance(shape, tuple) else f"width {shape}"
