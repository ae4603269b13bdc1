"""The per-episode timestamp rule: a stream's timestamps are non-empty, finite and strictly increasing.

One rule for the writer (`TableWriter` refuses an episode that breaks it), the builders (`build seed`,
`build hdf5`) and `validate_table`, so nothing writes a table that validation would refuse. The
messages recognise float32-collapsed epoch timestamps and say how to fix them.
"""

from __future__ import annotations

import numpy as np

from ..errors import SchemaError

FLOAT32_HINT = (
    "this looks like float32-collapsed epoch timestamps (float32 has a resolution of 128 s at epoch "
    "times, so every timestamp of a session becomes one value); re-convert the source logs with "
    "`wdspq build hdf5`, which keeps nanosecond timestamps as float64 seconds"
)


def timestamp_problem(ts: np.ndarray) -> str | None:
    """What is wrong with one episode's timestamps (None if finite and strictly increasing)."""
    ts = np.asarray(ts)
    if ts.size == 0:
        return "empty episode: no timestamps"
    finite = np.isfinite(ts)
    if not finite.all():
        i = int(np.argmin(finite))
        return f"timestamp {i} is {float(ts[i])!r}; timestamps must be finite"
    d = np.diff(ts)
    bad = d <= 0
    if not bad.any():
        return None
    return not_increasing_message(ts, d, int(np.argmax(bad)))


def not_increasing_message(ts: np.ndarray, d: np.ndarray, i: int) -> str:
    """The message for timestamps `ts` (steps `d`) whose step `i` is not positive."""
    msg = f"timestamps are not strictly increasing: timestamp {i + 1} ({float(ts[i + 1])!r}) <= timestamp {i} ({float(ts[i])!r})"
    n_equal = int(np.count_nonzero(d == 0))
    if ts.size >= 2 and n_equal == ts.size - 1:
        msg = f"timestamps are not increasing: all {ts.size} timestamps equal {float(ts[0])!r}; {FLOAT32_HINT}"
    elif ts.size >= 3 and n_equal >= 0.9 * (ts.size - 1):
        msg += f"; {n_equal} of {ts.size - 1} steps are zero: {FLOAT32_HINT}"
    return msg


def check_timestamps(ts: np.ndarray, where: str) -> None:
    """Raise SchemaError (prefixed by `where`) unless `ts` is non-empty, finite and strictly increasing."""
    problem = timestamp_problem(ts)
    if problem:
        raise SchemaError(f"{where}: {problem}")
