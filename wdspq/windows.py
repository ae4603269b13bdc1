"""Window semantics (DESIGN.md "Window semantics", normative): the spec, the index, and the one cut.

Pure numpy in, numpy out: no I/O, no torch. The map-style dataset and the shard exporter both call
`cut_window`, so they agree by construction.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import SpecError

RESAMPLE_MODES = ("none", "linear", "nearest")


def round_half_up(x: float) -> int:
    """Lengths round to the nearest row count, halves up (0.25 s at 10 Hz is 3 rows), like frame indices."""
    return int(math.floor(x + 0.5))


@dataclass(frozen=True)
class WindowSpec:
    """What one training window holds; lengths are in seconds and turned into counts by `resolve`.

    `video_frame_offsets` are frame offsets relative to the frame at the anchor time; `stride` steps
    anchors over action indices; `obs_resample` picks raw rows by time (`none`) or resamples at
    `obs_rate_hz` (default: the action rate).
    """

    acts_length_sec: float
    obs_length_sec: float
    obs_offset_sec: float = 0.0
    video_frame_offsets: tuple[int, ...] = (0,)
    stride: int = 1
    full_windows_only: bool = False
    obs_resample: str = "none"
    obs_rate_hz: float | None = None
    max_text_tokens: int = 32

    def __post_init__(self) -> None:
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
        for name in ("acts_length_sec", "obs_length_sec"):
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

    def to_dict(self) -> dict[str, Any]:
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
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WindowSpec:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise SpecError(f"unknown window spec fields: {sorted(unknown)}")
        return cls(**d)

    def digest(self) -> str:
        """A stable hash of the spec (for manifests and loader states)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def resolve(self, action_rate_hz: float, observation_rate_hz: float) -> ResolvedSpec:
        """Turn seconds into row counts with the table's rates (rounded, never truncated)."""
        A = round_half_up(self.acts_length_sec * action_rate_hz)
        if self.obs_resample == "none":
            obs_rate = observation_rate_hz
        else:
            obs_rate = self.obs_rate_hz if self.obs_rate_hz is not None else action_rate_hz
        O = round_half_up(self.obs_length_sec * obs_rate)  # noqa: E741
        if A < 1:
            raise SpecError(
                f"acts_length_sec={self.acts_length_sec} at the action rate {action_rate_hz:g} Hz "
                f"gives {A} action rows; use a longer window"
            )
        if O < 1:
            raise SpecError(
                f"obs_length_sec={self.obs_length_sec} at {obs_rate:g} Hz gives {O} observation rows; "
                "use a longer window"
            )
        return ResolvedSpec(spec=self, A=A, O=O, obs_rate_hz=float(obs_rate))


@dataclass(frozen=True)
class ResolvedSpec:
    """A spec with its lengths in rows for one table's rates."""

    spec: WindowSpec
    A: int
    O: int  # noqa: E741
    obs_rate_hz: float
    offsets: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "offsets", np.asarray(self.spec.video_frame_offsets, dtype=np.int64))


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
class EpisodeArrays:
    """The numeric content of one episode as the window function needs it (already decoded)."""

    action_ts: np.ndarray  # (n_a,) float64
    actions: np.ndarray  # (n_a, D) float32
    observation_ts: np.ndarray  # (n_o,) float64
    observations: np.ndarray  # (n_o, S) float32
    frames: np.ndarray | None = None  # decoded clip (n_f, 3, H, W) uint8, or None when the episode has no video
    fps: float = 0.0
    video_t0: float = 0.0
    image: np.ndarray | None = None  # (3, H, W) uint8, or None when the episode has no image
    tokens: Mapping[str, np.ndarray] = field(default_factory=dict)  # each (max_text_tokens,) int64


@dataclass(frozen=True)
class SampleShapes:
    """Shapes that do not come from the spec: frame and image sizes, whether the table has images."""

    action_dim: int
    obs_dim: int
    frame_hw: tuple[int, int]
    image_hw: tuple[int, int] | None  # None: the table has no image column content -> no image keys


def frame_indices(t0: float, video_t0: float, fps: float, offsets: np.ndarray) -> np.ndarray:
    """`floor((t0 - video_t0) * fps + 0.5) + offsets` (DESIGN.md "Frames")."""
    base = math.floor((t0 - video_t0) * fps + 0.5)
    return base + offsets


def observation_rows(
    obs_ts: np.ndarray, observations: np.ndarray, t_start: float, rspec: ResolvedSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Observation rows and mask for a window whose observation range starts at `t_start`."""
    O, S = rspec.O, observations.shape[1]  # noqa: E741
    n = len(obs_ts)
    out = np.zeros((O, S), dtype=np.float32)
    mode = rspec.spec.obs_resample
    if mode == "none":
        j0 = int(np.searchsorted(obs_ts, t_start, side="left"))
        j1 = min(j0 + O, n)
        mask = np.zeros(O, dtype=bool)
        if j1 > j0:
            out[: j1 - j0] = observations[j0:j1]
            mask[: j1 - j0] = True
        return out, mask
    t = t_start + np.arange(O, dtype=np.float64) / rspec.obs_rate_hz
    if n == 0:
        return out, np.zeros(O, dtype=bool)
    mask = (t >= obs_ts[0]) & (t <= obs_ts[-1])
    if not mask.any():
        return out, mask
    tm = t[mask]
    if mode == "linear":
        # Left neighbour j with obs_ts[j] <= t; weight 0 at exact source timestamps gives exact values.
        j = np.clip(np.searchsorted(obs_ts, tm, side="right") - 1, 0, max(n - 2, 0))
        if n == 1:
            out[mask] = observations[0]
            return out, mask
        t_left, t_right = obs_ts[j], obs_ts[j + 1]
        w = np.clip((tm - t_left) / (t_right - t_left), 0.0, 1.0)[:, None]
        left = observations[j].astype(np.float64)
        right = observations[j + 1].astype(np.float64)
        vals = left + w * (right - left)
        # Exactness at w == 1 (t equals the right sample's timestamp) and clamping into the neighbour range.
        vals = np.where(w == 1.0, right, vals)
        lo, hi = np.minimum(left, right), np.maximum(left, right)
        out[mask] = np.clip(vals, lo, hi).astype(np.float32)
    else:  # nearest; ties go to the earlier sample
        j = np.searchsorted(obs_ts, tm, side="left")
        j = np.clip(j, 0, n - 1)
        prev = np.clip(j - 1, 0, n - 1)
        take_prev = (j > 0) & (np.abs(tm - obs_ts[prev]) <= np.abs(obs_ts[j] - tm))
        out[mask] = observations[np.where(take_prev, prev, j)]
    return out, mask


def cut_window(
    ep: EpisodeArrays,
    k: int,
    rspec: ResolvedSpec,
    shapes: SampleShapes,
    window_index: int,
    episode_index: int,
) -> dict[str, np.ndarray]:
    """The sample dict (DESIGN.md "The sample") of the window anchored at action index `k`.

    `anchor_index` in the sample is `k`, the anchor's action row. Every array is freshly allocated,
    so callers may hand them to torch without copies.
    """
    A = rspec.A
    n_a = len(ep.action_ts)
    if not 0 <= k < n_a:
        raise SpecError(f"anchor action index {k} is outside the episode (it has {n_a} actions)")
    t0 = float(ep.action_ts[k])

    actions = np.zeros((A, shapes.action_dim), dtype=np.float32)
    actions_mask = np.zeros(A, dtype=bool)
    k1 = min(k + A, n_a)
    actions[: k1 - k] = ep.actions[k:k1]
    actions_mask[: k1 - k] = True

    observations, observations_mask = observation_rows(
        ep.observation_ts, ep.observations, t0 + rspec.spec.obs_offset_sec, rspec
    )

    F = len(rspec.offsets)
    H, W = shapes.frame_hw
    frames = np.zeros((F, 3, H, W), dtype=np.uint8)
    frames_mask = np.zeros(F, dtype=bool)
    if ep.frames is not None and len(ep.frames):
        idx = frame_indices(t0, ep.video_t0, ep.fps, rspec.offsets)
        ok = (idx >= 0) & (idx < len(ep.frames))
        if ok.any():
            frames[ok] = ep.frames[idx[ok]]
        frames_mask = ok

    sample: dict[str, np.ndarray] = {
        "actions": actions,
        "actions_mask": actions_mask,
        "observations": observations,
        "observations_mask": observations_mask,
        "frames": frames,
        "frames_mask": frames_mask,
    }
    if shapes.image_hw is not None:
        ih, iw = shapes.image_hw
        if ep.image is not None:
            sample["image"] = np.array(ep.image, dtype=np.uint8, copy=True)
            sample["image_mask"] = np.array(True)
        else:
            sample["image"] = np.zeros((3, ih, iw), dtype=np.uint8)
            sample["image_mask"] = np.array(False)
    for name, ids in ep.tokens.items():
        sample[name] = np.array(ids, dtype=np.int64, copy=True)
    sample["window_index"] = np.array(window_index, dtype=np.int64)
    sample["episode_index"] = np.array(episode_index, dtype=np.int64)
    sample["anchor_index"] = np.array(k, dtype=np.int64)
    sample["t0"] = np.array(t0, dtype=np.float64)
    return sample


def sample_schema(rspec: ResolvedSpec, shapes: SampleShapes, token_keys: Sequence[str]) -> dict[str, dict]:
    """Keys, dtypes and shapes of every sample of a dataset (recorded in the shard manifest)."""
    F = len(rspec.offsets)
    H, W = shapes.frame_hw
    M = rspec.spec.max_text_tokens
    schema: dict[str, dict] = {
        "actions": {"dtype": "float32", "shape": [rspec.A, shapes.action_dim]},
        "actions_mask": {"dtype": "bool", "shape": [rspec.A]},
        "observations": {"dtype": "float32", "shape": [rspec.O, shapes.obs_dim]},
        "observations_mask": {"dtype": "bool", "shape": [rspec.O]},
        "frames": {"dtype": "uint8", "shape": [F, 3, H, W]},
        "frames_mask": {"dtype": "bool", "shape": [F]},
    }
    if shapes.image_hw is not None:
        schema["image"] = {"dtype": "uint8", "shape": [3, *shapes.image_hw]}
        schema["image_mask"] = {"dtype": "bool", "shape": []}
    for name in token_keys:
        schema[name] = {"dtype": "int64", "shape": [M]}
    for name in ("window_index", "episode_index", "anchor_index"):
        schema[name] = {"dtype": "int64", "shape": []}
    schema["t0"] = {"dtype": "float64", "shape": []}
    return schema

