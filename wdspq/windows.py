"""Window semantics (docs/windows.md, rules version 2): the spec, the index, and the one cut.

Pure numpy in, numpy out: no I/O, no torch. The map-style dataset and the shard exporter both call
`cut_window`, so they agree by construction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import offsets as _offsets
from .errors import SpecError
from .jsonutil import short_digest
from .timegrid import (
    OBS_ALIGN,
    base_frame,
    decimal_fraction,
    first_row,
    frame_indices,
    length_rows,
    rate_fraction,
    resample_rows,
)

RESAMPLE_MODES = ("none", "linear", "nearest")
WINDOW_RULES_VERSION = 2  # docs/windows.md "Versions": 1 = every export before this field existed
SIGNAL_FIELDS = ("obs_length_sec", "obs_offset_sec", "obs_resample", "obs_rate_hz", "obs_align")
CAMERA_FIELDS = ("video_frame_offsets",)


@dataclass(frozen=True)
class WindowSpec:
    """What one training window holds; lengths are in seconds and turned into counts by `resolve`.

    `video_frame_offsets` are frame offsets relative to the frame at the anchor time; `stride` steps
    anchors over action indices; `obs_resample` picks raw rows by time (`none`) or resamples at
    `obs_rate_hz` (default: the action rate). `obs_align` (raw rows only): a window's first row is the
    latest sample `at_or_before` its start (default, causal) or the first `at_or_after` it (opt-in).
    `delta_timestamps` (`from_delta_timestamps`; with `boundary`, `tolerance_s`, `max_task_bytes`) replaces the lengths.
    """

    acts_length_sec: float | None = None
    obs_length_sec: float | None = None
    obs_offset_sec: float = 0.0
    video_frame_offsets: tuple[int, ...] = (0,)
    stride: int = 1
    full_windows_only: bool = False
    obs_resample: str = "none"
    obs_rate_hz: float | None = None
    max_text_tokens: int = 32
    overrides: Mapping[str, Mapping[str, Any]] | None = None
    obs_align: str = "at_or_before"
    delta_timestamps: Mapping[str, Sequence[float]] | None = None
    boundary: str = "pad"
    tolerance_s: float = 1e-4
    max_task_bytes: int = 256

    @classmethod
    def from_delta_timestamps(
        cls, delta_timestamps: Mapping[str, Sequence[float]], tolerance_s: float = 1e-4, boundary: str = "clamp",
        stride: int = 1, max_text_tokens: int = 32, max_task_bytes: int = 256,
    ) -> WindowSpec:
        """Windows as LeRobot cuts them: per stream (`action`, a signal, a camera) time offsets in seconds from
        the anchor, e.g. `{"action": [0.0, 0.1], "observation.state": [-0.1, 0.0]}` (docs/windows.md
        "Explicit offsets": listed streams stacked, clamped and flagged at the edges; the others one row)."""
        return cls(delta_timestamps=delta_timestamps, tolerance_s=tolerance_s, boundary=boundary, stride=stride,
                   max_text_tokens=max_text_tokens, max_task_bytes=max_task_bytes)

    def __post_init__(self) -> None:
        _offsets.check_spec(self)  # delta_timestamps, boundary, tolerance_s, max_task_bytes
        offsets = self.video_frame_offsets
        if isinstance(offsets, (int, np.integer)):
            offsets = (offsets,)
        try:
            offsets = tuple(offsets)
        except TypeError:
            raise SpecError(f"video_frame_offsets must be a list of integers, got {offsets!r}") from None
        if len(offsets) == 0:
            raise SpecError("video_frame_offsets is empty; give at least one frame offset (e.g. [0])")
        for o in offsets:
            if isinstance(o, bool) or not isinstance(o, (int, np.integer)) and not (
                isinstance(o, float) and o.is_integer()
            ):
                raise SpecError(f"video_frame_offsets must be integers, got {o!r}")
        object.__setattr__(self, "video_frame_offsets", tuple(int(o) for o in offsets))
        for name in ("acts_length_sec", "obs_length_sec") if self.delta_timestamps is None else ():
            v = getattr(self, name)
            if not isinstance(v, (int, float, np.number)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                raise SpecError(f"{name} must be a positive number of seconds, got {v!r}")
            object.__setattr__(self, name, float(v))
        if not isinstance(self.obs_offset_sec, (int, float, np.number)) or not math.isfinite(self.obs_offset_sec):
            raise SpecError(f"obs_offset_sec must be a finite number of seconds, got {self.obs_offset_sec!r}")
        object.__setattr__(self, "obs_offset_sec", float(self.obs_offset_sec))
        if isinstance(self.stride, bool) or not isinstance(self.stride, (int, np.integer)) or self.stride < 1:
            raise SpecError(f"stride must be an integer >= 1, got {self.stride!r}")
        object.__setattr__(self, "stride", int(self.stride))
        if self.obs_resample not in RESAMPLE_MODES:
            raise SpecError(f"obs_resample must be one of {RESAMPLE_MODES}, got {self.obs_resample!r}")
        if self.obs_align not in OBS_ALIGN:
            raise SpecError(f"obs_align must be one of {OBS_ALIGN}, got {self.obs_align!r}")
        if self.obs_align != "at_or_before" and self.obs_resample != "none":
            raise SpecError(
                f"obs_align={self.obs_align!r} applies to raw rows only (obs_resample='none'); a resampled "
                f"stream (obs_resample={self.obs_resample!r}) is read on its time grid: drop obs_align"
            )
        if self.obs_rate_hz is not None:
            r = self.obs_rate_hz
            if not isinstance(r, (int, float, np.number)) or not math.isfinite(r) or r <= 0:
                raise SpecError(f"obs_rate_hz must be a positive number of Hz, got {r!r}")
            object.__setattr__(self, "obs_rate_hz", float(r))
            if self.obs_resample == "none":
                raise SpecError(
                    f"obs_rate_hz={r} is only used when resampling; set obs_resample='linear' or 'nearest' "
                    "(with obs_resample='none' observations keep their recorded rate)"
                )
        m = self.max_text_tokens
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
            raise SpecError(f"max_text_tokens must be an integer >= 1, got {m!r}")
        object.__setattr__(self, "max_text_tokens", int(m))
        object.__setattr__(self, "full_windows_only", bool(self.full_windows_only))
        object.__setattr__(self, "overrides", _check_overrides(self, self.overrides))

    def to_dict(self) -> dict[str, Any]:
        if self.delta_timestamps is not None:
            return _offsets.spec_dict(self)
        return {
            "acts_length_sec": self.acts_length_sec,
            "obs_length_sec": self.obs_length_sec,
            "obs_offset_sec": self.obs_offset_sec,
            "video_frame_offsets": list(self.video_frame_offsets),
            "stride": self.stride,
            "full_windows_only": self.full_windows_only,
            "obs_resample": self.obs_resample,
            "obs_rate_hz": self.obs_rate_hz,
            "max_text_tokens": self.max_text_tokens,
            **({"overrides": {k: dict(v) for k, v in self.overrides.items()}} if self.overrides else {}),
            **({"obs_align": self.obs_align} if self.obs_align != "at_or_before" else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WindowSpec:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise SpecError(f"unknown window spec fields: {sorted(unknown)}")
        return cls(**d)

    def digest(self) -> str:
        """A stable hash of the spec (for manifests and loader states)."""
        return short_digest(self.to_dict())

    def for_stream(self, name: str) -> WindowSpec:
        """The spec with stream `name`'s overrides applied (observation fields or frame offsets)."""
        o = (self.overrides or {}).get(name)
        if not o:
            return self
        return WindowSpec(**_merged(self, o))

    def resolve(self, layout: SampleLayout) -> ResolvedSpec:
        """Turn seconds into row counts with the table's rates (rounded halves up, never truncated)."""
        if self.delta_timestamps is not None:
            streams = _offsets.resolve_explicit(self, layout)
            return ResolvedSpec(spec=self, layout=layout, A=streams["actions"].rows, signals={}, cameras={}, explicit=streams)
        signal_names, camera_names = [c[0] for c in layout.signals], [c[0] for c in layout.cameras]
        unknown = sorted(set(self.overrides or {}) - set(signal_names) - set(camera_names))
        if unknown:
            raise SpecError(
                f"overrides name {unknown}, which are not signal streams or cameras of the table "
                f"(signals: {signal_names}, cameras: {camera_names})"
            )
        for name, fields_ in (self.overrides or {}).items():
            kind, allowed = ("signal", SIGNAL_FIELDS) if name in signal_names else ("camera", CAMERA_FIELDS)
            wrong = sorted(set(fields_) - set(allowed))
            if wrong:
                raise SpecError(
                    f"overrides[{name!r}]: {wrong} do not apply to a {kind} stream ({name!r} is a {kind}; "
                    f"a {kind} takes {list(allowed)})"
                )
        A = length_rows(self.acts_length_sec, rate_fraction(layout.action_rate_hz))
        if A < 1:
            raise SpecError(
                f"acts_length_sec={self.acts_length_sec} at the action rate {layout.action_rate_hz:g} Hz "
                f"gives {A} action rows; use a longer window"
            )
        signals = {}
        for name, width, rate in layout.signals:
            sp = self.for_stream(name)
            if sp.obs_resample == "none":
                obs_rate, exact = rate, rate_fraction(rate)
            elif sp.obs_rate_hz is not None:
                obs_rate, exact = sp.obs_rate_hz, decimal_fraction(sp.obs_rate_hz)
            else:
                obs_rate, exact = layout.action_rate_hz, rate_fraction(layout.action_rate_hz)
            O = length_rows(sp.obs_length_sec, exact)  # noqa: E741
            if O < 1:
                raise SpecError(
                    f"stream {name!r}: obs_length_sec={sp.obs_length_sec} at {obs_rate:g} Hz gives {O} observation rows; "
                    "use a longer window"
                )
            signals[name] = SignalWindow(O=O, width=width, rate_hz=float(obs_rate), mode=sp.obs_resample,
                                         offset_sec=sp.obs_offset_sec, align=sp.obs_align, src_rate_hz=float(rate))
        cameras = {name: (np.asarray(self.for_stream(name).video_frame_offsets, dtype=np.int64), h, w, rate)
                   for name, h, w, rate in layout.cameras}
        return ResolvedSpec(spec=self, layout=layout, A=A, signals=signals, cameras=cameras)


def _check_overrides(spec: WindowSpec, overrides: Any) -> dict[str, dict[str, Any]] | None:
    """Per-stream overrides: {stream: {field: value}} with observation fields or `video_frame_offsets`."""
    if not overrides:
        return None
    if not isinstance(overrides, Mapping):
        raise SpecError(f"overrides must map stream names to fields, got {overrides!r}")
    allowed = {*SIGNAL_FIELDS, *CAMERA_FIELDS}
    out = {}
    for name, fields_ in sorted(overrides.items()):
        if not isinstance(fields_, Mapping) or set(fields_) - allowed:
            bad = sorted(set(fields_) - allowed) if isinstance(fields_, Mapping) else fields_
            raise SpecError(f"overrides[{name!r}]: {bad!r} cannot be overridden per stream (allowed: {sorted(allowed)})")
        if set(fields_) & set(SIGNAL_FIELDS) and set(fields_) & set(CAMERA_FIELDS):
            raise SpecError(
                f"overrides[{name!r}]: mixes observation fields (signals only) with video_frame_offsets "
                "(cameras only); a stream is one or the other"
            )
        try:
            checked = WindowSpec(**_merged(spec, fields_))  # validates the merged fields
        except SpecError as e:
            raise SpecError(f"overrides[{name!r}]: {e}") from None
        out[str(name)] = {k: getattr(checked, k) if k != "video_frame_offsets" else list(checked.video_frame_offsets)
                          for k in fields_}
    return out


def _merged(spec: WindowSpec, fields_: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's fields with one stream's overrides applied; `obs_resample: none` drops an inherited rate."""
    d = {k: v for k, v in spec.to_dict().items() if k != "overrides"}
    d.update(fields_)
    if d.get("obs_resample") == "none" and "obs_rate_hz" not in fields_:
        d["obs_rate_hz"] = None
    return d


@dataclass(frozen=True)
class SampleLayout:
    """What the table contributes to a sample: the action width and rate, and every stream's shape.

    `signals` are (name, S, rate Hz), `cameras` (name, H, W, rate Hz or None), `images` (name, H, W),
    in table order.
    """

    action_dim: int
    action_rate_hz: float
    signals: tuple[tuple[str, int, float], ...] = ()
    cameras: tuple[tuple[str, int, int, float | None], ...] = ()
    images: tuple[tuple[str, int, int], ...] = ()


@dataclass(frozen=True)
class SignalWindow:
    """One signal stream's window: O rows of width S, at `rate_hz` (resampled when mode != none);
    `src_rate_hz` is the stream's own rate (it sets the time tolerance; 0: use `rate_hz`)."""

    O: int  # noqa: E741
    width: int
    rate_hz: float
    mode: str
    offset_sec: float
    align: str = "at_or_before"
    src_rate_hz: float = 0.0


@dataclass(frozen=True)
class ResolvedSpec:
    """A spec with its lengths in rows for one table: A, each signal's window, each camera's offsets."""

    spec: WindowSpec
    layout: SampleLayout
    A: int
    signals: Mapping[str, SignalWindow]
    cameras: Mapping[str, tuple[np.ndarray, int, int, float | None]]  # offsets, H, W, rate
    explicit: Mapping[str, _offsets.StreamOffsets] | None = None  # a spec by explicit offsets: every stream

    def summary(self) -> dict[str, Any]:
        """JSON-able row counts (recorded in the manifest)."""
        if self.explicit is not None:
            return {"offsets": {n: None if s.offsets is None else len(s.offsets) for n, s in self.explicit.items()}}
        return {"A": self.A, "signals": {n: {"O": w.O, "rate_hz": w.rate_hz} for n, w in self.signals.items()},
                "cameras": {n: len(c[0]) for n, c in self.cameras.items()}}


def anchors(n_actions: int, A: int, stride: int, full_windows_only: bool) -> np.ndarray:
    """Anchor action indices of one episode: 0, stride, ... below n (and with k + A <= n if full only)."""
    limit = n_actions - A + 1 if full_windows_only else n_actions
    if limit <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, limit, stride, dtype=np.int64)


def num_anchors(n_actions: np.ndarray, A: int, stride: int, full_windows_only: bool) -> np.ndarray:
    """Vectorised count of anchors per episode (same rule as `anchors`)."""
    n = np.asarray(n_actions, dtype=np.int64)
    limit = n - A + 1 if full_windows_only else n
    return np.where(limit > 0, (limit + stride - 1) // stride, 0).astype(np.int64)


class WindowIndex:
    """The canonical enumeration: episodes in table order, anchors ascending; window i <-> (episode, anchor)."""

    def __init__(self, n_actions: Sequence[int] | np.ndarray, rspec: ResolvedSpec) -> None:
        self.stride = rspec.spec.stride
        self.counts = num_anchors(np.asarray(n_actions), rspec.A, self.stride, rspec.spec.full_windows_only)
        self.starts = np.zeros(len(self.counts) + 1, dtype=np.int64)
        np.cumsum(self.counts, out=self.starts[1:])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, i: int | np.ndarray) -> tuple[Any, Any, Any]:
        """Window index (or array of them) -> (episode index, anchor number, anchor action index k)."""
        ep = np.searchsorted(self.starts, i, side="right") - 1
        j = np.asarray(i) - self.starts[ep]
        return ep, j, j * self.stride

    def window_of(self, episode: int, anchor_number: int) -> int:
        return int(self.starts[episode] + anchor_number)


@dataclass
class CameraClip:
    """One episode's decoded camera: frames (n, 3, H, W) uint8 and each frame's time (n,) float64.

    `fps` is set for version 1 clips (constant rate from `ts[0]`): their base frame keeps the version 1
    rule `round_half_up((t0 - ts[0]) * fps)`, so their samples are unchanged.
    """

    ts: np.ndarray
    frames: np.ndarray
    fps: float | None = None


@dataclass
class EpisodeArrays:
    """The decoded content of one episode as the window function needs it, streams by name."""

    action_ts: np.ndarray  # (n_a,) float64
    actions: np.ndarray  # (n_a, D) float32
    signals: Mapping[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # name -> (ts, (n, S))
    cameras: Mapping[str, CameraClip | None] = field(default_factory=dict)  # None: no clip in this episode
    images: Mapping[str, np.ndarray | None] = field(default_factory=dict)  # (3, H, W) uint8 or None
    tokens: Mapping[str, np.ndarray] = field(default_factory=dict)  # each (max_text_tokens,) int64
    info: Mapping[str, Any] = field(default_factory=dict)  # explicit offsets: offsets.episode_infos' entry


def camera_indices(clip: CameraClip, t0: float, offsets: np.ndarray, rate_hz: float) -> np.ndarray:
    """Frame index for each offset (may be outside the clip: those frames are masked)."""
    if clip.fps:
        return frame_indices(t0, float(clip.ts[0]), clip.fps, offsets)
    return base_frame(clip.ts, t0, rate_hz) + offsets


def observation_rows(
    obs_ts: np.ndarray, observations: np.ndarray, t_start: float, win: SignalWindow
) -> tuple[np.ndarray, np.ndarray]:
    """One signal stream's rows and mask for a window whose observation range starts at `t_start`.

    Raw rows (`none`): rows `j0 .. j0 + O - 1` with `j0 = timegrid.first_row(...)`; rows before the
    first sample (padding) and past the last are zeros with the mask false. Resampled: `timegrid.resample_rows`
    at `t_start + i / rate_hz`.
    """
    O = win.O  # noqa: E741
    n = len(obs_ts)
    src_rate = win.src_rate_hz or win.rate_hz
    if win.mode == "none":
        out = np.zeros((O, observations.shape[1]), dtype=np.float32)
        mask = np.zeros(O, dtype=bool)
        j0 = first_row(obs_ts, t_start, src_rate, win.align)
        lo, hi = max(j0, 0), min(j0 + O, n)  # rows that exist; the others are padding or past the end
        if hi > lo:
            out[lo - j0 : hi - j0] = observations[lo:hi]
            mask[lo - j0 : hi - j0] = True
        return out, mask
    t = t_start + np.arange(O, dtype=np.float64) / win.rate_hz
    return resample_rows(obs_ts, observations, t, win.mode, src_rate)


def cut_window(
    ep: EpisodeArrays,
    k: int,
    rspec: ResolvedSpec,
    window_index: int,
    episode_index: int,
) -> dict[str, np.ndarray]:
    """The sample dict (README "The sample") of the window anchored at action index `k`.

    `anchor_index` in the sample is `k`, the anchor's action row. Every array is freshly allocated,
    so callers may hand them to torch without copies.
    """
    A, layout = rspec.A, rspec.layout
    n_a = len(ep.action_ts)
    if not 0 <= k < n_a:
        raise SpecError(f"anchor action index {k} is outside the episode (it has {n_a} actions)")
    t0 = float(ep.action_ts[k])
    if rspec.explicit is not None:
        sample = _offsets.cut_explicit(ep, k, rspec.explicit, rspec.spec)
        _tail(sample, ep, layout)
        sample.update(_offsets.lerobot_values(ep.info, k, rspec.spec.max_task_bytes))
        return _ids(sample, window_index, episode_index, k, t0)

    actions = np.zeros((A, layout.action_dim), dtype=np.float32)
    actions_mask = np.zeros(A, dtype=bool)
    k1 = min(k + A, n_a)
    actions[: k1 - k] = ep.actions[k:k1]
    actions_mask[: k1 - k] = True
    sample: dict[str, np.ndarray] = {"actions": actions, "actions_mask": actions_mask}

    for name, win in rspec.signals.items():
        ts, values = ep.signals[name]
        sample[name], sample[f"{name}_mask"] = observation_rows(ts, values, t0 + win.offset_sec, win)

    for name, (offsets, h, w, rate) in rspec.cameras.items():
        F = len(offsets)
        frames = np.zeros((F, 3, h, w), dtype=np.uint8)
        mask = np.zeros(F, dtype=bool)
        times = np.zeros(F, dtype=np.float64)
        clip = ep.cameras.get(name)
        if clip is not None and len(clip.frames):
            # A camera without a rate (no clip has two frames) runs on at the action rate: a one-frame
            # clip is shown near its time, masked elsewhere (never a stale frame in every window).
            idx = camera_indices(clip, t0, offsets, rate or layout.action_rate_hz)
            mask = (idx >= 0) & (idx < len(clip.frames))
            if mask.any():
                frames[mask] = clip.frames[idx[mask]]
                times[mask] = clip.ts[idx[mask]]
        sample[name], sample[f"{name}_mask"], sample[f"{name}_ts"] = frames, mask, times

    _tail(sample, ep, layout)
    return _ids(sample, window_index, episode_index, k, t0)


def _tail(sample: dict[str, np.ndarray], ep: EpisodeArrays, layout: SampleLayout) -> None:
    """The images and token ids of a sample (the same for every window of an episode)."""
    for name, h, w in layout.images:
        img = ep.images.get(name)
        if img is not None:
            sample[name] = np.array(img, dtype=np.uint8, copy=True)
            sample[f"{name}_mask"] = np.array(True)
        else:
            sample[name] = np.zeros((3, h, w), dtype=np.uint8)
            sample[f"{name}_mask"] = np.array(False)
    for name, ids in ep.tokens.items():
        sample[name] = np.array(ids, dtype=np.int64, copy=True)


def _ids(sample: dict[str, np.ndarray], window_index: int, episode_index: int, k: int, t0: float) -> dict[str, np.ndarray]:
    sample["window_index"] = np.array(window_index, dtype=np.int64)
    sample["episode_index"] = np.array(episode_index, dtype=np.int64)
    sample["anchor_index"] = np.array(k, dtype=np.int64)
    sample["t0"] = np.array(t0, dtype=np.float64)
    return sample


def sample_schema(rspec: ResolvedSpec, token_keys: Sequence[str]) -> dict[str, dict]:
    """Keys, dtypes and shapes of every sample of a dataset, in `cut_window`'s order (the record layout)."""
    M = rspec.spec.max_text_tokens
    schema: dict[str, dict] = {
        "actions": {"dtype": "float32", "shape": [rspec.A, rspec.layout.action_dim]},
        "actions_mask": {"dtype": "bool", "shape": [rspec.A]},
    }
    if rspec.explicit is not None:
        schema = _offsets.explicit_schema(rspec.explicit)
    for name, win in rspec.signals.items():
        schema[name] = {"dtype": "float32", "shape": [win.O, win.width]}
        schema[f"{name}_mask"] = {"dtype": "bool", "shape": [win.O]}
    for name, (offsets, h, w, _) in rspec.cameras.items():
        schema[name] = {"dtype": "uint8", "shape": [len(offsets), 3, h, w]}
        schema[f"{name}_mask"] = {"dtype": "bool", "shape": [len(offsets)]}
        schema[f"{name}_ts"] = {"dtype": "float64", "shape": [len(offsets)]}
    for name, h, w in rspec.layout.images:
        schema[name] = {"dtype": "uint8", "shape": [3, h, w]}
        schema[f"{name}_mask"] = {"dtype": "bool", "shape": []}
    for name in token_keys:
        schema[name] = {"dtype": "int64", "shape": [M]}
    if rspec.explicit is not None:
        schema.update(_offsets.lerobot_schema(rspec.spec.max_task_bytes))
    for name in ("window_index", "episode_index", "anchor_index"):
        schema[name] = {"dtype": "int64", "shape": []}
    schema["t0"] = {"dtype": "float64", "shape": []}
    return schema
