"""The delta filter of float time series in a zstd record (the export chooses its keys: `tuning`).

A float array (time on axis 0) is stored as the byte planes of the second-order difference of its
integer bit patterns (wrapping, so exactly invertible): smooth trajectories become small integers whose
high bytes are runs of 0x00/0xff that zstd shrinks, which the raw float bytes (fresh mantissa bits every
step) are not. Undoing it is two cumulative sums (a few µs per sample). Both the codec (`encoding`,
`shared`) and the tuning import it from here, so neither needs the other for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

MIN_DELTA_BYTES = 256


def _int_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(f"<i{dtype.itemsize}")


def delta_candidates(schema: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Keys the delta filter may apply to: little-endian float arrays with at least two steps on axis 0 and
    MIN_DELTA_BYTES (a smaller field gains a few bytes at most, and undoing the filter costs ~4 µs a key)."""
    out = []
    for k, v in schema.items():
        dt, shape = np.dtype(v["dtype"]), tuple(v["shape"])
        if (dt.kind == "f" and dt.str[0] == "<" and dt.itemsize in (4, 8) and shape and shape[0] >= 2
                and dt.itemsize * int(np.prod(shape)) >= MIN_DELTA_BYTES):
            out.append(k)
    return out


def delta_encode(values: np.ndarray) -> np.ndarray:
    """Float array (T, ...) -> (itemsize, count) uint8 byte planes of its second-order integer delta."""
    u = np.ascontiguousarray(values).view(_int_dtype(values.dtype))
    first = u.copy()
    first[1:] -= u[:-1]  # integer arrays wrap: exactly invertible
    d = first.copy()
    d[1:] -= first[:-1]
    return d.reshape(-1).view(np.uint8).reshape(-1, values.dtype.itemsize).T


def delta_decode_into(planes: np.ndarray, dest: np.ndarray, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    """Undo `delta_encode`: `planes` ((itemsize, count) uint8) -> the values' bytes in `dest` (a uint8 array
    of itemsize*count bytes, not overlapping `planes`): one transposing copy and two in-place cumulative sums."""
    it = _int_dtype(dtype)
    rows = dest.reshape(-1, dtype.itemsize)
    rows[...] = planes.T
    d = rows.view(it).reshape(shape)
    np.add.accumulate(d, axis=0, dtype=it, out=d)
    np.add.accumulate(d, axis=0, dtype=it, out=d)


def delta_decode(planes: np.ndarray, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `delta_encode`: (itemsize, count) byte planes -> a new float array of `dtype` and `shape`."""
    out = np.empty(planes.size, dtype=np.uint8)
    delta_decode_into(planes, out, dtype, shape)
    return out.view(dtype).reshape(shape)
