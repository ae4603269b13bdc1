"""An independent oracle of the window rules (docs/windows.md), in exact arithmetic.

Rows are chosen from the samples' *intended* times as `fractions.Fraction`, with no call into wdspq: the
tests compare wdspq's float arithmetic against these.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

F = Fraction


def dec(x: float) -> Fraction:
    """A spec value as the decimal it was written as."""
    return Fraction(repr(float(x)))


def oracle_first_row(T: list[Fraction], t: Fraction, rate: Fraction, align: str = "at_or_before") -> int:
    """Latest sample at or before t; outside the recorded span the index runs on at the stream's rate."""
    n = len(T)
    if align == "at_or_after":
        return next((j for j in range(n) if T[j] >= t), n)
    if t < T[0]:
        return -math.ceil((T[0] - t) * rate)
    if t > T[-1]:
        return n - 1 + math.floor((t - T[-1]) * rate)
    return max(j for j in range(n) if T[j] <= t)


def oracle_rows(T, vals, t, rate, O, align="at_or_before"):  # noqa: E741
    j0 = oracle_first_row(T, t, rate, align)
    rows = [j0 + i for i in range(O)]
    mask = np.array([0 <= r < len(T) for r in rows])
    out = np.zeros((O, vals.shape[1]), np.float32)
    out[mask] = vals[[r for r in rows if 0 <= r < len(T)]]
    return out, mask, j0


def oracle_resampled(T, vals, t, rate_out: Fraction, O, mode):  # noqa: E741
    out = np.zeros((O, vals.shape[1]), np.float64)
    mask = np.zeros(O, bool)
    for i in range(O):
        ti = t + Fraction(i) / rate_out
        if not T[0] <= ti <= T[-1]:
            continue
        mask[i] = True
        if mode == "nearest":
            d = [abs(x - ti) for x in T]
            out[i] = vals[d.index(min(d))]  # first minimum: ties go to the earlier sample
        else:
            j = max(j for j in range(len(T)) if T[j] <= ti)
            if T[j] == ti:
                out[i] = vals[j]
            else:
                w = float((ti - T[j]) / (T[j + 1] - T[j]))
                out[i] = vals[j].astype(np.float64) + w * (vals[j + 1].astype(np.float64) - vals[j].astype(np.float64))
    return out, mask


def oracle_base_frame(T: list[Fraction], t0: Fraction, rate: Fraction) -> int:
    """Nearest frame in time (ties later); outside the clip the index runs on at the camera's rate."""
    n = len(T)
    if t0 < T[0]:
        return math.floor((t0 - T[0]) * rate + F(1, 2))
    if t0 > T[-1]:
        return n - 1 + math.floor((t0 - T[-1]) * rate + F(1, 2))
    d = [abs(x - t0) for x in T]
    return max(j for j in range(n) if d[j] == min(d))


def oracle_length(seconds: float, rate: Fraction) -> int:
    return math.floor(dec(seconds) * rate + F(1, 2))
