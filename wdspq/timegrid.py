"""Time arithmetic of the window rules (docs/windows.md): row counts, and which row sits at a time.

Pure numpy in, numpy out. Every "at or before t" / "equal in time" comparison uses one tolerance,
`tolerance()`: 1e-3 of the stream's period, and never less than 8 float64 ulps of the times compared.
It absorbs float noise (`0.2 - 0.05 == 0.15000000000000002`, epoch clocks spaced 2.4e-7 s apart) but is
far below any real step between two samples, so it never admits a sample from the future.
Camera frames are chosen by nearness (ties later): there only float noise counts as a tie
(`tolerance(None, ...)`), so the version 1 frame formula is unchanged away from exact halves.
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import numpy as np

TOL_FRACTION = 1e-3  # of a stream's period
ULPS = 8
OBS_ALIGN = ("at_or_before", "at_or_after")


def tolerance(rate_hz: float | None, *times: float) -> float:
    """Seconds within which two times count as equal: 1e-3 of a period, at least 8 ulps of the times."""
    floor = ULPS * math.ulp(max(map(abs, times), default=1.0))
    if not rate_hz:
        return max(floor, 1e-9)
    return max(TOL_FRACTION / rate_hz, floor)


def decimal_fraction(x: float) -> Fraction:
    """The decimal a spec value was written as (`repr`), exactly: 0.145 is 145/1000, not the binary float."""
    return Fraction(Decimal(repr(float(x))))


def rate_fraction(rate_hz: float) -> Fraction:
    """A table rate as the exact ratio it was snapped to (denominator up to 1001), else its exact binary value."""
    f = Fraction(float(rate_hz)).limit_denominator(1001)
    return f if abs(float(f) - rate_hz) <= 1e-12 * rate_hz else Fraction(float(rate_hz))


def round_half_up(x: float | Fraction) -> int:
    """Nearest integer, halves up: `floor(x + 1/2)`, exact for a `Fraction`, on the float as given otherwise.

    The one rounding rule of the window rules; callers add a tolerance to `x` where float noise must not
    decide a half.
    """
    return math.floor(x + (Fraction(1, 2) if isinstance(x, Fraction) else 0.5))


def length_rows(seconds: float, rate: Fraction) -> int:
    """Rows of a window `seconds` long at `rate`: `round_half_up(seconds * rate)` in exact arithmetic, so
    halves round up (0.145 s at 100 Hz is 15 rows, 0.25 s at 10 Hz is 3)."""
    return round_half_up(decimal_fraction(seconds) * rate)


def first_row(ts: np.ndarray, t: float, rate_hz: float, align: str = "at_or_before") -> int:
    """Index of a signal window's first row for a window starting at time `t` (may be < 0 or >= len(ts)).

    `at_or_before` (the default, causal): the latest sample at or before `t`. Outside the recorded span
    the index runs on at the stream's rate: before the first sample it is `-ceil((ts[0] - t) * rate)`
    (those rows are padding), past the last `n - 1 + floor((t - ts[-1]) * rate)` (masked).
    `at_or_after`: the first sample at or after `t` (0 before the episode, `n` after it).
    """
    n = len(ts)
    if n == 0:
        return 0
    t, first, last = float(t), float(ts[0]), float(ts[-1])
    tol = tolerance(rate_hz, t, first, last)
    if align == "at_or_after":
        return int(ts.searchsorted(t - tol, side="left"))
    if t < first - tol:
        return -math.ceil((first - t - tol) * rate_hz)
    if t > last + tol:
        return n - 1 + math.floor((t - last + tol) * rate_hz)
    return int(ts.searchsorted(t + tol, side="right")) - 1


def resample_rows(
    ts: np.ndarray, values: np.ndarray, t: np.ndarray, mode: str, rate_hz: float
) -> tuple[np.ndarray, np.ndarray]:
    """Values of a stream at times `t` (linear or nearest) and the mask of `t` inside `[ts[0], ts[-1]]`.

    Times within the tolerance of a sample are that sample (exact values, not masked at the ends);
    `nearest` ties (within the tolerance) go to the earlier sample; linear values lie between neighbours.
    """
    n, S = len(ts), values.shape[1]
    out = np.zeros((len(t), S), dtype=np.float32)
    if n == 0 or len(t) == 0:
        return out, np.zeros(len(t), dtype=bool)
    tol = tolerance(rate_hz, float(t[0]), float(t[-1]), float(ts[0]), float(ts[-1]))
    mask = (t >= ts[0] - tol) & (t <= ts[-1] + tol)
    if not mask.any():
        return out, mask
    tm = t[mask]
    j = np.clip(np.searchsorted(ts, tm + tol, side="right") - 1, 0, n - 1)  # latest sample at or before
    at = np.abs(tm - ts[j]) <= tol
    nxt = np.minimum(j + 1, n - 1)
    if mode == "linear":
        t_left, t_right = ts[j], ts[nxt]
        span = np.where(nxt > j, t_right - t_left, 1.0)
        w = np.clip((tm - t_left) / span, 0.0, 1.0)[:, None]
        left = values[j].astype(np.float64)
        right = values[nxt].astype(np.float64)
        vals = np.clip(left + w * (right - left), np.minimum(left, right), np.maximum(left, right))
        vals = np.where(at[:, None], left, vals)
        out[mask] = vals.astype(np.float32)
    else:  # nearest; ties (within the tolerance) go to the earlier sample
        take_next = (nxt > j) & ~at & ((ts[nxt] - tm) < (tm - ts[j]) - tol)
        out[mask] = values[np.where(take_next, nxt, j)]
    return out, mask


def nearest_frame(ts: np.ndarray, t: float, rate_hz: float | None = None) -> int:
    """Index of the frame whose time is nearest to `t`; ties go to the later frame.

    Frames are picked by nearness, not by "at or before", so only float noise (`tolerance(None, ...)`:
    8 ulps of the times, at least 1 ns) counts as a tie: a frame never wins by being up to 1e-3 of a
    period farther away. `rate_hz` is accepted for symmetry and unused.
    """
    n = len(ts)
    tol = tolerance(None, t, float(ts[0]), float(ts[-1]))
    j = int(np.searchsorted(ts, t - tol, side="left"))  # ts[j - 1] < t - tol <= ts[j]
    if j == 0:
        return 0
    if j == n:
        return n - 1
    return j if ts[j] - t <= t - ts[j - 1] + tol else j - 1


def frame_indices(t0: float, video_t0: float, fps: float, offsets: np.ndarray) -> np.ndarray:
    """Version 1 constant-rate clips: `round_half_up((t0 - video_t0) * fps) + offsets` (halves within the
    tolerance round up)."""
    base = round_half_up((t0 - video_t0 + tolerance(None, t0, video_t0)) * fps)
    return base + offsets


def base_frame(ts: np.ndarray, t0: float, rate_hz: float) -> int:
    """The base frame of a window anchored at `t0` (docs/windows.md "Cameras").

    Inside the clip's time span: the frame nearest in time (ties later). Before the first or after the
    last frame the index runs on at `rate_hz`: `round_half_up((t0 - ts[0]) * rate)` before (<= 0) and
    `n - 1 + round_half_up((t0 - ts[-1]) * rate)` after, so a window far outside the clip gets masked
    frames, never a stale end frame.
    """
    n = len(ts)
    if t0 < ts[0]:
        return round_half_up((t0 - float(ts[0]) + tolerance(None, t0, float(ts[0]))) * rate_hz)
    if t0 > ts[-1]:
        return n - 1 + round_half_up((t0 - float(ts[-1]) + tolerance(None, t0, float(ts[-1]))) * rate_hz)
    return nearest_frame(ts, t0, rate_hz)
