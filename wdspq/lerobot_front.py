"""LeRobot-shaped samples and batches: `to_lerobot`, `lerobot_frames_to_float`, `lerobot_stats`.

A window spec made with `WindowSpec.from_delta_timestamps` cuts LeRobot's windows; `to_lerobot` renames
and converts a wdspq sample (or a collated batch of them) to the keys and conventions LeRobot policies
read (README "Training a LeRobot policy on wdspq shards"):

- `actions` -> `action`; every other stream keeps its name (`observation.state`, `observation.images.top`);
- `<key>_mask` -> `<key>_is_pad` (its negation): `(T,)` for a stream listed in `delta_timestamps`
  (stacked `(T, ...)`); a stream not listed has no time axis (as in LeRobot) and a 0-d `<key>_is_pad`,
  and so does a still image (true: the episode has none). LeRobot has no flag for those keys; it is
  kept so a frame missing at the anchor is not mistaken for a real one (policies ignore keys they do
  not read); camera `<key>_ts` is dropped;
- frames -> float32 in [0, 1], `(T, C, H, W)` (stacked) or `(C, H, W)`; with `frames="uint8"` they stay
  uint8 (4x fewer bytes through the loader and to the GPU) and `lerobot_frames_to_float` converts them
  after `.to(device)`;
- `task` -> the task string (a list of strings for a batch), `episode_index` -> the source dataset's
  episode index, `frame_index` (the anchor's row), `timestamp` (float32), `index`, `task_index`.

It is a plain function of one dict, so it works on a map-style sample, on a batch after collation, or
as a batch stage of the stream (`stream.map_batch(to_lerobot)`: StreamLoader yields LeRobot batches and
keeps its fused collate and shared ring); as a per-sample stage (`stream.map`) it costs that fast path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from .errors import WdspqError

FRAME_MODES = ("float", "uint8")
_DROP = {"t0", "anchor_index", "source_episode_index"}


def _tensor(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v
    if isinstance(v, np.ndarray):
        return torch.from_numpy(v) if v.flags.writeable else torch.from_numpy(v.copy())
    if isinstance(v, np.generic):
        return torch.as_tensor(v)
    return v


def _is_frames(v: torch.Tensor) -> bool:
    return v.dtype == torch.uint8 and v.ndim >= 3 and v.shape[-3] == 3


def _task_strings(v: torch.Tensor) -> str | list[str]:
    a = v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    if a.ndim == 1:
        return a.tobytes().rstrip(b"\0").decode("utf-8", errors="replace")
    return [row.tobytes().rstrip(b"\0").decode("utf-8", errors="replace") for row in a]


def _plan(x: Mapping[str, Any], lead: int) -> list[tuple[str, str, str]]:
    """(key, op, output key) for every key of a sample or batch of this layout (cached by `to_lerobot`)."""
    streams = {k[: -len("_mask")] for k in x if k.endswith("_mask") and k[: -len("_mask")] in x}
    cameras = {k for k in streams if f"{k}_ts" in x}
    plan = []
    for k, v in x.items():
        name = "action" if k == "actions" else k
        if k in _DROP or (k.endswith("_ts") and k[:-3] in cameras):
            continue
        if k.endswith("_mask") and k[: -len("_mask")] in streams:
            base = k[: -len("_mask")]  # stacked (LeRobot's flags) or 0-d (one row, a still image): kept
            plan.append((k, "pad", f"{'action' if base == 'actions' else base}_is_pad"))
        elif k == "task" and getattr(v, "dtype", None) == torch.uint8:
            plan.append((k, "task", k))
        elif k == "episode_index":
            plan.append(("source_episode_index" if "source_episode_index" in x else k, "keep", k))
        elif isinstance(v, torch.Tensor) and _is_frames(v):
            plan.append((k, "frames", name))
        else:
            plan.append((k, "keep", name))
    if "anchor_index" in x:
        plan.append(("anchor_index", "keep", "frame_index"))
    if "t0" in x:
        plan.append(("t0", "float", "timestamp"))
    return plan


_PLANS: dict[tuple, list[tuple[str, str, str]]] = {}


def to_lerobot(sample: Mapping[str, Any], frames: str = "float") -> dict[str, Any]:
    """A wdspq sample or collated batch -> a dict with LeRobot's keys and conventions (module doc).

    `frames="float"` gives float32 frames in [0, 1] (LeRobot's); `frames="uint8"` leaves them uint8 for
    `lerobot_frames_to_float` after the move to the device (the cheaper place to convert).
    """
    if frames not in FRAME_MODES:
        raise WdspqError(f"to_lerobot: frames must be one of {FRAME_MODES}, got {frames!r}")
    x = {k: v if isinstance(v, torch.Tensor) else _tensor(v) for k, v in sample.items()}
    wi = x.get("window_index")
    if wi is None:
        raise WdspqError(f"to_lerobot: not a wdspq sample or batch (no 'window_index'; keys: {sorted(x)[:12]})")
    lead = wi.ndim  # 0 for one sample, 1 for a batch
    sig = (lead, *((k, getattr(v, "ndim", -1), getattr(v, "dtype", None)) for k, v in x.items()))
    plan = _PLANS.get(sig)
    if plan is None:
        plan = _PLANS[sig] = _plan(x, lead)
        if len(_PLANS) > 64:  # layouts are few; never grow without bound
            _PLANS.pop(next(iter(_PLANS)))
    out: dict[str, Any] = {}
    for k, op, name in plan:
        v = x[k]
        if op == "keep":
            out[name] = v
        elif op == "pad":
            out[name] = ~v
        elif op == "frames":
            out[name] = v.to(torch.float32).div_(255.0) if frames == "float" else v
        elif op == "float":
            out[name] = v.to(torch.float32)
        else:
            out[name] = _task_strings(v)
    return out


def lerobot_frames_to_float(batch: dict[str, Any], keys: Iterable[str] | None = None) -> dict[str, Any]:
    """Convert the uint8 frames of a `to_lerobot(..., frames="uint8")` batch to float32 in [0, 1], in the
    dict (call it after `.to(device)`: uint8 crosses the bus, the GPU does the division)."""
    for k in list(keys) if keys is not None else list(batch):
        v = batch[k]
        if isinstance(v, torch.Tensor) and _is_frames(v):
            batch[k] = v.to(torch.float32).div_(255.0)
    return batch


def lerobot_stats(table: str | os.PathLike) -> dict[str, dict[str, torch.Tensor]]:
    """The LeRobot dataset's own per-feature statistics (`meta/stats.json`, or its episodes' statistics
    pooled), kept by `wdspq build lerobot` in the table's metadata, as tensors keyed by LeRobot's names.

    For `wdspq.Normalize(lerobot_stats(table), keys=["action", "observation.state"])` on `to_lerobot`
    batches: they have no `_mask` keys, so every row (clamped ones too) is normalised, as LeRobot does.
    """
    from .table import read_meta

    meta = read_meta(str(table))
    stats = (meta.extra.get("lerobot") or {}).get("stats")
    if not stats:
        raise WdspqError(f"{table}: no LeRobot statistics in the table's metadata (built by `wdspq build lerobot` "
                         "from a dataset with meta/stats.json or meta/episodes_stats.jsonl?)")
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, st in stats.items():
        if isinstance(st, Mapping) and all(f in st for f in ("mean", "std", "min", "max")):
            out[name] = {f: torch.tensor(np.asarray(st[f], dtype=np.float32)) for f in ("mean", "std", "min", "max")}
    return out
