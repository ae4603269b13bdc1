"""Stream rates (docs/windows.md "Rates"): measured from timestamp steps at build time, then snapped.

Pure: numpy in, a float out; `RatePool` pools many episodes' steps in bounded memory. The table
writer stores the result in each stream's metadata; validation recomputes it the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction

import numpy as np

from ..errors import SchemaError

MAX_RATE_DIFFS = 1 << 20  # timestamp differences a RatePool keeps per stream (8 MiB)


def snap_rate(rate: float, rel: float = 1e-6, max_denominator: int = 1001) -> float:
    """A measured rate, replaced by the exact integer or small-integer ratio within `rel` of it.

    Float noise of epoch timestamps (100 Hz measured as 100.0000954) would otherwise change rounded
    window lengths from table to table.
    """
    frac = Fraction(rate).limit_denominator(max_denominator)
    for cand in (Fraction(round(rate)), frac):
        if cand > 0 and abs(float(cand) - rate) <= rel * rate:
            return float(cand)
    return float(rate)


def median_rate(timestamp_lists: Iterable[np.ndarray], column: str = "timestamps") -> float:
    """`1 / median(diff(ts))` over the diffs of all episodes pooled, snapped (docs/table.md "Rates")."""
    lists = [np.asarray(ts, dtype=np.float64) for ts in timestamp_lists]
    top = max((float(np.abs(ts).max()) for ts in lists if ts.size), default=0.0)
    return rate_from_diffs([np.diff(ts) for ts in lists], column, top)


def rate_from_diffs(diffs: list[np.ndarray], column: str, max_abs_ts: float = 0.0) -> float:
    """The snapped rate of pooled timestamp steps: a jittered clock's nominal rate (`snap_jittered_rate`),
    else the exact integer or small ratio near `1 / median(steps)` (`snap_rate`).

    The snap tolerance is 1e-6 relative, widened to the float64 resolution of the timestamps themselves
    (epoch timestamps near 1.7e9 s are spaced 2.4e-7 s apart: a 4 ms step is only known to ~6e-5).
    """
    diffs = [d for d in diffs if d.size]
    if not diffs:
        raise SchemaError(f"column {column!r}: cannot compute a rate, no episode has two timestamps")
    med = float(np.median(np.concatenate(diffs)))
    if not np.isfinite(med) or med <= 0:
        raise SchemaError(f"column {column!r}: median timestamp step is {med!r}; timestamps must increase")
    rel = max(1e-6, 2.0 * float(np.spacing(max_abs_ts)) / med)
    nominal = snap_jittered_rate(np.concatenate(diffs), med)
    return nominal if nominal is not None else snap_rate(1.0 / med, rel=rel)


JITTER_SNAP_REL = 0.01  # a jittered rate snaps to a nominal rate at most 1 % away


def snap_jittered_rate(steps: np.ndarray, median_step: float) -> float | None:
    """A jittered stream's nominal rate, or None when the steps show no such rate (then `snap_rate` applies).

    Candidates are the integer, half-integer and NTSC (n * 1000/1001) rates near `1 / median_step`; the one
    nearest to `1 / m` is taken, where `m` is the mean of the steps within half a median step of the median
    (dropped samples left out; jitter cancels in a mean of consecutive steps, so `m` is far more precise
    than the median), provided its period lies inside the steps' interquartile range and within 1 % of
    the median step. Clock jitter moves the median from table to table (a 50 Hz stream with +-0.5 ms
    jitter measures 49.96-50.06 Hz), which would change rounded window lengths; a clean clock has an
    interquartile range of float noise only, so a real off-nominal rate (100.01 Hz) is kept.
    """
    q25, q75 = np.quantile(steps, [0.25, 0.75])
    single = steps[np.abs(steps - median_step) <= 0.5 * median_step]
    m = float(single.mean()) if single.size else median_step
    rate = 1.0 / median_step
    cands = {Fraction(round(rate)), Fraction(round(2 * rate), 2), Fraction(round(rate * 1.001) * 1000, 1001)}
    fits = [c for c in cands if c > 0 and q25 <= 1.0 / float(c) <= q75
            and abs(1.0 / float(c) - median_step) <= JITTER_SNAP_REL * median_step]
    if not fits:
        return None
    return float(min(fits, key=lambda c: (abs(1.0 / float(c) - m), c.denominator)))


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
