"""Windows by explicit time offsets (LeRobot's `delta_timestamps`), docs/windows.md "Explicit offsets".

Pure numpy in, numpy out, like `windows.cut_window`, which calls `cut_explicit` for a spec with
`delta_timestamps`; the map-style dataset and the exporter therefore cut these windows in one place.

Per stream (actions, a signal or a camera) a listed stream gets one row per offset `d`, stacked
`(T, ...)`. The actions, and signals on the actions' clock (the same timestamps), take LeRobot's row
rule: row `k + round(d * rate)`, clamped to the episode and flagged outside it. Cameras and signals on
other clocks take the sample nearest in time to `t0 + d` (clamped to the episode's span, the actions'
first and last time) when it lies within `tolerance_s`. A flagged row (mask false) holds, with
`boundary="clamp"`, the row or sample found (the edge one outside the episode, as LeRobot clamps) or,
with `boundary="pad"`, zeros. A stream not listed gets the one row at the anchor, without the time axis
(LeRobot's rule for keys not in `delta_timestamps`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import SpecError
from .timegrid import ULPS

BOUNDARIES = ("clamp", "pad")
ACTION_ALIASES = {"action": "actions"}  # LeRobot's key -> wdspq's actions stream
# spec fields an explicit-offsets spec replaces (they must keep their defaults)
REPLACED = {"obs_offset_sec": 0.0, "video_frame_offsets": (0,), "obs_resample": "none", "obs_rate_hz": None,
            "overrides": None, "obs_align": "at_or_before", "full_windows_only": False}
LEROBOT_KEYS = ("task", "task_index", "index", "source_episode_index")


class Offsets(Mapping):
    """A spec's `delta_timestamps` as stored: a read-only, hashable mapping stream -> tuple of seconds
    (so an explicit spec hashes like any other spec); it compares equal to the plain dict."""

    __slots__ = ("_d", "_items")

    def __init__(self, d: Mapping[str, tuple[float, ...]]) -> None:
        self._d = dict(d)
        self._items = tuple(self._d.items())

    def __getitem__(self, key: str) -> tuple[float, ...]:
        return self._d[key]

    def __iter__(self) -> Any:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        return repr(self._d)

    def __reduce__(self) -> tuple:
        return (Offsets, (self._d,))


def check_delta_timestamps(delta: Any) -> Offsets:
    """`{stream: [seconds, ...]}` -> a checked, key-sorted `Offsets` of float tuples ("action" means `actions`)."""
    if not isinstance(delta, Mapping) or not delta:
        raise SpecError(f"delta_timestamps must map stream names to lists of offsets in seconds, got {delta!r}")
    out: dict[str, tuple[float, ...]] = {}
    for key, offs in delta.items():
        if not isinstance(key, str):
            raise SpecError(f"delta_timestamps: stream names must be strings, got {key!r}")
        name = ACTION_ALIASES.get(key, key)
        if name in out:
            raise SpecError(f"delta_timestamps: {key!r} names the actions stream twice (as 'action' and 'actions')")
        if isinstance(offs, (int, float, np.number)):
            offs = [offs]
        try:
            vals = [float(o) for o in offs]
        except (TypeError, ValueError):
            raise SpecError(f"delta_timestamps[{key!r}]: expected a list of offsets in seconds, got {offs!r}") from None
        if not vals or any(isinstance(o, bool) for o in offs) or not all(math.isfinite(v) for v in vals):
            raise SpecError(f"delta_timestamps[{key!r}]: expected a non-empty list of finite seconds, got {offs!r}")
        out[name] = tuple(vals)
    return Offsets(dict(sorted(out.items())))


def check_spec(spec: Any) -> None:
    """Validate (and normalise) the explicit-offsets fields of a spec (called from `WindowSpec.__post_init__`)."""
    if spec.delta_timestamps is not None:
        object.__setattr__(spec, "delta_timestamps", check_delta_timestamps(spec.delta_timestamps))
    if spec.boundary not in BOUNDARIES:
        raise SpecError(f"boundary must be one of {BOUNDARIES}, got {spec.boundary!r}")
    tol = spec.tolerance_s
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.number)) or not math.isfinite(tol) or tol < 0:
        raise SpecError(f"tolerance_s must be a number of seconds >= 0, got {tol!r}")
    object.__setattr__(spec, "tolerance_s", float(tol))
    m = spec.max_task_bytes
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise SpecError(f"max_task_bytes must be an integer >= 1, got {m!r}")
    if spec.delta_timestamps is None:
        if spec.boundary != "pad":
            raise SpecError(f"boundary={spec.boundary!r} applies to windows by explicit offsets (give delta_timestamps)")
        return
    for name in ("acts_length_sec", "obs_length_sec"):
        if getattr(spec, name) is not None:
            raise SpecError(f"{name} does not apply with delta_timestamps: the offsets list every row of a stream "
                            "(docs/windows.md 'Explicit offsets')")
    for name, default in REPLACED.items():
        if getattr(spec, name) != default:
            raise SpecError(f"{name}={getattr(spec, name)!r} does not apply with delta_timestamps (the offsets replace it; "
                            "docs/windows.md 'Explicit offsets')")


@dataclass(frozen=True)
class StreamOffsets:
    """One stream's resolved offsets: `offsets` in seconds, or None for the unstacked row at the anchor."""

    kind: str  # actions | signal | camera
    offsets: np.ndarray | None
    width: int = 0  # actions / signal
    hw: tuple[int, int] = (0, 0)  # camera
    rate_hz: float | None = None  # actions / signal: the actions' rate, for rows on the actions' clock

    @property
    def rows(self) -> int:
        return 1 if self.offsets is None else len(self.offsets)


def spec_dict(spec: Any) -> dict[str, Any]:
    """`WindowSpec.to_dict` of an explicit-offsets spec (the manifest's and the loader state's spec)."""
    return {"delta_timestamps": {k: list(v) for k, v in spec.delta_timestamps.items()}, "boundary": spec.boundary,
            "tolerance_s": spec.tolerance_s, "stride": spec.stride, "max_text_tokens": spec.max_text_tokens,
            "max_task_bytes": spec.max_task_bytes}


def resolve_explicit(spec: Any, layout: Any) -> dict[str, StreamOffsets]:
    """Every stream of the table with its offsets; checks names, and offsets against each stream's rate."""
    delta = spec.delta_timestamps
    kinds = {"actions": ("actions", layout.action_rate_hz)}
    kinds.update({n: ("signal", r) for n, _, r in layout.signals})
    kinds.update({n: ("camera", r) for n, _, _, r in layout.cameras})
    unknown = sorted(set(delta) - set(kinds))
    if unknown:
        images = sorted(set(unknown) & {n for n, _, _ in layout.images})
        why = f" ({images} are still images: one per episode, no times)" if images else ""
        raise SpecError(f"delta_timestamps names {unknown}, which are not streams of the table{why} "
                        f"(it has: {sorted(kinds)}; 'action' means 'actions')")
    for name, offs in delta.items():
        rate = kinds[name][1]
        if rate:  # LeRobot's own check: every offset is a whole number of the stream's periods
            for d in offs:
                if abs(d * rate - round(d * rate)) > spec.tolerance_s * rate + 1e-9:
                    raise SpecError(
                        f"delta_timestamps[{name!r}]: offset {d} s is not a multiple of the stream's period "
                        f"(1/{rate:g} Hz) within tolerance_s={spec.tolerance_s}; every row would be padded")
    rate = layout.action_rate_hz or None
    out = {"actions": StreamOffsets("actions", _arr(delta.get("actions")), width=layout.action_dim, rate_hz=rate)}
    for n, width, _ in layout.signals:
        out[n] = StreamOffsets("signal", _arr(delta.get(n)), width=width, rate_hz=rate)
    for n, h, w, _ in layout.cameras:
        out[n] = StreamOffsets("camera", _arr(delta.get(n)), hw=(h, w))
    return out


def _arr(offs: tuple[float, ...] | None) -> np.ndarray | None:
    return None if offs is None else np.asarray(offs, dtype=np.float64)


def rows_at(ts: np.ndarray, t: np.ndarray, tolerance_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(nearest sample index, within tolerance) for each time `t`; indices are clamped to the stream.

    Ties between two samples go to the earlier one. The tolerance is never below 8 float64 ulps of the
    times compared (float noise of epoch clocks never pads a row).
    """
    n = len(ts)
    if n == 0:
        return np.zeros(len(t), dtype=np.int64), np.zeros(len(t), dtype=bool)
    j = np.clip(np.searchsorted(ts, t, side="left"), 1, max(n - 1, 1))
    left = np.clip(j - 1, 0, n - 1)
    right = np.clip(j, 0, n - 1)
    near = np.where(np.abs(ts[right] - t) < np.abs(t - ts[left]), right, left)
    scale = np.maximum(np.abs(t), abs(float(ts[-1])))
    tol = np.maximum(tolerance_s, ULPS * np.spacing(scale))
    return near.astype(np.int64), np.abs(ts[near] - t) <= tol


def _take(values: np.ndarray, idx: np.ndarray, ok: np.ndarray, clamp: bool, n: int) -> np.ndarray:
    """values[idx] where kept (every row with `clamp`, else only `ok` rows), zeros elsewhere (fresh array)."""
    out = np.zeros((len(idx), *values.shape[1:]), dtype=values.dtype)
    keep = np.ones(len(idx), dtype=bool) if clamp else ok
    keep = keep & (n > 0)
    if keep.any():
        out[keep] = values[idx[keep]]
    return out


def rows_by_index(k: int, n: int, offsets: np.ndarray, rate_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """LeRobot's rule on the anchor's clock: rows `k + round(d * rate)` clamped to `[0, n)`, and which lie inside."""
    want = k + np.round(offsets * rate_hz).astype(np.int64)
    return np.clip(want, 0, max(n - 1, 0)), (want >= 0) & (want < n)


def rows_in_span(ts: np.ndarray, t: np.ndarray, span: tuple[float, float], tolerance_s: float) -> tuple[np.ndarray, np.ndarray]:
    """`rows_at` for times clamped to the episode's `span` (first, last action time); a time outside it
    (beyond `tolerance_s`) is flagged, as LeRobot clamps and flags a row outside the episode."""
    lo, hi = span
    tol = np.maximum(tolerance_s, ULPS * np.spacing(np.maximum(np.abs(t), max(abs(lo), abs(hi)))))
    inside = (t >= lo - tol) & (t <= hi + tol)
    idx, ok = rows_at(ts, np.where(inside, t, np.clip(t, lo, hi)), tolerance_s)
    return idx, ok & inside


def cut_explicit(ep: Any, k: int, streams: Mapping[str, StreamOffsets], spec: Any) -> dict[str, np.ndarray]:
    """The stream keys of the window anchored at action row `k` (actions, signals, cameras; masks, `_ts`)."""
    t0 = float(ep.action_ts[k])
    span = (float(ep.action_ts[0]), float(ep.action_ts[-1]))
    clamp = spec.boundary == "clamp"
    sample: dict[str, np.ndarray] = {}
    for name, so in streams.items():
        offs = so.offsets if so.offsets is not None else np.zeros(1)
        t = t0 + offs
        if so.kind == "actions":
            ts, values = ep.action_ts, ep.actions
        elif so.kind == "signal":
            ts, values = ep.signals[name]
        else:
            clip = ep.cameras.get(name)
            ts = clip.ts if clip is not None else np.zeros(0)
            values = clip.frames if clip is not None else np.zeros((0, 3, *so.hw), dtype=np.uint8)
        n = len(ts)
        if so.rate_hz and (ts is ep.action_ts or (n == len(ep.action_ts) and np.array_equal(ts, ep.action_ts))):
            idx, ok = rows_by_index(k, n, offs, so.rate_hz)
        else:
            idx, ok = rows_in_span(ts, t, span, spec.tolerance_s)
        vals = _take(values, idx, ok, clamp, n)
        mask = ok.copy()
        if so.kind == "camera":
            times = np.where(ok | clamp, ts[idx] if n else 0.0, 0.0).astype(np.float64)
        if so.offsets is None:  # unstacked: the row at the anchor, no time axis
            vals, mask = vals[0].copy(), np.array(mask[0])
            if so.kind == "camera":
                times = np.array(times[0])
        sample[name], sample[f"{name}_mask"] = vals, mask
        if so.kind == "camera":
            sample[f"{name}_ts"] = times
    return sample


def explicit_schema(streams: Mapping[str, StreamOffsets]) -> dict[str, dict]:
    """Keys, dtypes and shapes of `cut_explicit`'s output, in its order."""
    schema: dict[str, dict] = {}
    for name, so in streams.items():
        lead = [len(so.offsets)] if so.offsets is not None else []
        if so.kind == "camera":
            schema[name] = {"dtype": "uint8", "shape": [*lead, 3, *so.hw]}
        else:
            schema[name] = {"dtype": "float32", "shape": [*lead, so.width]}
        schema[f"{name}_mask"] = {"dtype": "bool", "shape": lead}
        if so.kind == "camera":
            schema[f"{name}_ts"] = {"dtype": "float64", "shape": lead}
    return schema


def lerobot_schema(max_task_bytes: int) -> dict[str, dict]:
    """The per-episode keys an explicit-offsets sample carries for LeRobot: the task text (UTF-8, zero
    padded), its task index, the source's frame `index` and episode index."""
    return {"task": {"dtype": "uint8", "shape": [max_task_bytes]},
            **{k: {"dtype": "int64", "shape": []} for k in LEROBOT_KEYS[1:]}}


def lerobot_values(info: Mapping[str, Any], k: int, max_task_bytes: int) -> dict[str, np.ndarray]:
    """Those keys' values for anchor row `k` of an episode whose `info` is `EpisodeArrays.info` (the task of
    the run of rows holding `k` where the episode changes task, as LeRobot takes each row's task)."""
    task, task_index = info.get("task", ""), info.get("task_index", -1)
    runs = info.get("task_runs")
    if runs:
        j = max(int(np.searchsorted([run[0] for run in runs], k, side="right")) - 1, 0)
        task, task_index = runs[j][2], runs[j][1]
    raw = str(task).encode()
    if len(raw) > max_task_bytes:
        raise SpecError(f"episode {info.get('episode_id', '?')!r}: its task text is {len(raw)} bytes, more than "
                        f"max_task_bytes={max_task_bytes}; export with a larger max_task_bytes")
    task_bytes = np.zeros(max_task_bytes, dtype=np.uint8)
    task_bytes[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return {"task": task_bytes, "task_index": np.array(int(task_index), dtype=np.int64),
            "index": np.array(int(info.get("index_from", 0)) + k, dtype=np.int64),
            "source_episode_index": np.array(int(info.get("source_episode_index", -1)), dtype=np.int64)}


def episode_infos(extra: Mapping[str, Any], episode_ids: list[str], texts: list[str],
                  n_actions: np.ndarray) -> list[dict[str, Any]]:
    """Per table row, what an explicit-offsets sample carries besides its streams (`EpisodeArrays.info`).

    A table built by `wdspq build lerobot` records each episode's source episode index and first global
    frame index, and the dataset's task list; any other table counts its own rows and frames, and numbers
    its distinct texts in order of first appearance.
    """
    lr = (extra or {}).get("lerobot") or {}
    by_id = lr.get("episodes_by_id") or {}
    tasks = [str(t) for t in lr.get("tasks") or []]
    seen: dict[str, int] = {}
    starts = np.concatenate([[0], np.cumsum(n_actions)]).astype(np.int64)
    out = []
    for row, (eid, text) in enumerate(zip(episode_ids, texts)):
        text = text or ""
        seen.setdefault(text, len(seen))
        src = by_id.get(eid) or {}
        task_index = tasks.index(text) if text in tasks else (-1 if tasks else seen[text])
        out.append({"episode_id": eid, "task": text, "task_index": task_index, "task_runs": src.get("task_runs"),
                    "source_episode_index": int(src.get("episode_index", row)),
                    "index_from": int(src.get("index_from", starts[row]))})
    return out
