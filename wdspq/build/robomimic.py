"""Import a robomimic HDF5 file (`data/demo_N/actions`, `data/demo_N/obs/<key>`, `mask/<filter>`) into a table.

Mapping (docs/importers.md):
- `data/demo_N` -> episode `demo_N`, in the order of N (demo_2 before demo_10); `--episodes` selects by N;
- `actions` (T, D) -> the `actions` stream;
- an obs key holding (T, H, W, 3) uint8 (`agentview_image`, ...) -> a camera of the same name; every
  other numeric obs key -> a signal stream of the same name, flattened to (T, S). One stream per key
  (not one concatenated state vector) keeps each key's name and width, so nothing is lost and a model
  picks the keys it wants; other image-shaped keys (depth maps (T, H, W, 1)) are skipped and listed;
- every row is at i / rate: the control rate is `env_kwargs.control_freq` from `data.attrs["env_args"]`,
  or `--rate` (which wins when given);
- text: `--text`, else the language instruction the file carries (`env_args.env_lang`,
  `env_kwargs.language_instruction`, `problem_info.language_instruction`), else the env name;
- `mask/<filter>` (lists of demo names) -> the `split` column (train, then valid, else the first
  filter key holding the demo); `--split NAME` keeps the demos of any filter key NAME.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from ..errors import SchemaError
from ..media import check_video_codec, is_lossless
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

_DEMO = re.compile(r"^demo_(\d+)$")


def _attr_json(attrs: Any, key: str, where: str) -> dict[str, Any]:
    if key not in attrs:
        return {}
    raw = attrs[key]
    raw = raw.decode() if isinstance(raw, (bytes, np.bytes_)) else str(raw)
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise SchemaError(f"{where}: attribute {key!r} is not valid JSON: {e}") from None
    return value if isinstance(value, dict) else {}


def _demos(f: h5py.File, where: str) -> dict[int, str]:
    data = f.get("data")
    if not isinstance(data, h5py.Group):
        raise SchemaError(f"{where}: not a robomimic file (no group 'data'; top-level entries: {', '.join(sorted(f)) or 'none'})")
    demos = {}
    for name in data:
        m = _DEMO.match(name)
        if m:
            demos[int(m.group(1))] = name
    if not demos:
        raise SchemaError(f"{where}: group 'data' holds no demo_N groups")
    return dict(sorted(demos.items()))


def _masks(f: h5py.File, demos: dict[int, str]) -> dict[str, set[int]]:
    """mask/<filter> -> the demo numbers it lists."""
    by_name = {v: k for k, v in demos.items()}
    out: dict[str, set[int]] = {}
    group = f.get("mask")
    if isinstance(group, h5py.Group):
        for key in group:
            names = [n.decode() if isinstance(n, (bytes, np.bytes_)) else str(n) for n in np.asarray(group[key][()]).reshape(-1)]
            out[key] = {by_name[n] for n in names if n in by_name}
    return out


def _text(env_args: dict[str, Any], problem: dict[str, Any]) -> str:
    kwargs = env_args.get("env_kwargs") or {}
    for v in (env_args.get("env_lang"), kwargs.get("language_instruction"), problem.get("language_instruction")):
        if isinstance(v, str) and v:
            return v
    return str(env_args.get("env_name") or "")


def _classify(demo: h5py.Group, where: str) -> tuple[dict[str, tuple[int, ...]], dict[str, int], list[str]]:
    """(cameras: key -> (H, W), signals: key -> width, skipped keys) from one demo's obs group."""
    obs = demo.get("obs")
    cams: dict[str, tuple[int, ...]] = {}
    sigs: dict[str, int] = {}
    skipped: list[str] = []
    if not isinstance(obs, h5py.Group):
        return cams, sigs, skipped
    for key in obs:
        ds = obs[key]
        if not isinstance(ds, h5py.Dataset) or not np.issubdtype(ds.dtype, np.number):
            skipped.append(key)
        elif ds.ndim == 4 and ds.shape[-1] == 3 and ds.dtype == np.uint8:
            cams[key] = (int(ds.shape[1]), int(ds.shape[2]))
        elif ds.ndim >= 4:
            skipped.append(key)  # depth maps and other images that are not RGB
        else:
            sigs[key] = int(np.prod(ds.shape[1:])) if ds.ndim > 1 else 1
    return cams, sigs, skipped


def _array(group: h5py.Group, key: str, n: int, where: str) -> np.ndarray:
    ds = group.get(key)
    if not isinstance(ds, h5py.Dataset):
        raise SchemaError(f"{where}: dataset {key!r} not found")
    a = np.asarray(ds[()])
    if len(a) != n:
        raise SchemaError(f"{where}: {key!r} has {len(a)} rows, 'actions' has {n}")
    return a


def _chunked(ds: h5py.Dataset, rows: int = 64) -> Iterator[np.ndarray]:
    """The frames of a (T, H, W, 3) dataset, read 64 at a time (memory: one chunk, not the demo)."""
    for i in range(0, len(ds), rows):
        yield from ds[i:i + rows]


def build_from_robomimic(
    path: str | os.PathLike,
    out: str | os.PathLike,
    rate: float | None = None,
    text: str | None = None,
    episodes: Iterable[int] | None = None,
    split: str | None = None,
    video_codec: str = "ffv1",
    progress: bool = True,
    overwrite: bool = True,
) -> TableMeta:
    """Import the robomimic file `path` (optionally only `episodes` / one filter key `split`) into a table at `out`."""
    check_video_codec(video_codec, SchemaError)
    where = str(path)
    check_output_path(Path(out), overwrite=overwrite, inputs=[path])
    try:
        f = h5py.File(path, "r")
    except (OSError, FileNotFoundError) as e:
        raise SchemaError(f"{where}: not a readable HDF5 file: {e}") from None
    with f:
        demos = _demos(f, where)
        env_args = _attr_json(f["data"].attrs, "env_args", f"{where}: group 'data'")
        problem = _attr_json(f["data"].attrs, "problem_info", f"{where}: group 'data'")
        if rate is None:
            rate = (env_args.get("env_kwargs") or {}).get("control_freq")
            if not rate:
                raise SchemaError(f"{where}: data.attrs['env_args'] has no env_kwargs.control_freq; give the rate with --rate HZ")
        rate = float(rate)
        masks = _masks(f, demos)
        chosen = select(list(demos), episodes, split, masks, where=where)
        first = f["data"][demos[chosen[0]]]
        cams, sigs, skipped = _classify(first, f"{where}: data/{demos[chosen[0]]}")
        if "actions" not in first:
            raise SchemaError(f"{where}: data/{demos[chosen[0]]} has no 'actions' dataset")
        a_shape = first["actions"].shape
        streams: list[Stream] = [actions_stream(int(np.prod(a_shape[1:])) if len(a_shape) > 1 else 1)]
        streams += [signal_stream(k, w) for k, w in sigs.items()]
        lossless = is_lossless(video_codec)
        streams += [camera_stream(k, h, w, codec=video_codec, lossless=lossless) for k, (h, w) in cams.items()]
        sentence = text if text is not None else _text(env_args, problem)
        extra = {"robomimic": {"env_args": env_args, "rate_hz": rate, "skipped_obs": skipped,
                               "filter_keys": sorted(masks), "episodes": len(chosen), "of_episodes": len(demos)}}
        with TableWriter(out, streams, row_group_size=8, overwrite=overwrite) as writer:
            for n in tqdm(chosen, desc=f"import {Path(path).name}", unit="demo", disable=not progress):
                name = demos[n]
                dwhere = f"{where}: data/{name}"
                demo = f["data"][name]
                if "actions" not in demo:
                    raise SchemaError(f"{dwhere}: no 'actions' dataset")
                actions = np.asarray(demo["actions"][()], dtype=np.float32)
                t = len(actions)
                actions = actions.reshape(t, -1)
                ts = np.arange(t, dtype=np.float64) / rate
                signals = {k: (ts, _array(demo["obs"], k, t, f"{dwhere}/obs").astype(np.float32).reshape(t, -1)) for k in sigs}
                cameras: dict[str, tuple[bytes | None, np.ndarray]] = {}
                for k, hw in cams.items():
                    ds = demo["obs"].get(k)
                    if not isinstance(ds, h5py.Dataset) or ds.ndim != 4:
                        raise SchemaError(f"{dwhere}/obs: {k!r} is not a (T, H, W, 3) dataset like the first demo's")
                    cameras[k] = (encode_frames(_chunked(ds), hw, video_codec, rate, t, f"{dwhere}/obs/{k}",
                                                "dataset", "the first demo"), ts)
                writer.add(Episode(episode_id=name, text=sentence, action_ts=ts, actions=actions, signals=signals,
                                   cameras=cameras, split=split_of(n, masks)))
            return writer.close(source=f"robomimic {where}", extra=extra)
