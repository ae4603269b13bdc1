"""Audit digests of what a rank delivered: an ordered chain and a mergeable set digest (pads excluded)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

PAD_INDEX = -1  # window_index of a pad sample (a repeat that keeps ranks even), never digested
ZERO_SET = "0" * 16  # set digest of nothing
_MASK64 = (1 << 64) - 1


def mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser of int64 values, as uint64: a well-spread 64-bit hash of each index."""
    z = np.asarray(values, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z


def update_digests(ordered: str, set_digest: str, window_index: Any) -> tuple[str, str]:
    """Fold one batch's ``window_index`` values (pads, ``-1``, excluded) into the two audit digests.

    ordered: ``sha256(bytes.fromhex(ordered) || int64-LE indices)`` hex, chained per batch (order-
    and batch-sensitive; "" is the empty chain; a batch of only pads leaves it unchanged).
    set_digest: 16 hex digits of ``sum(mix64(i)) mod 2**64`` (order-insensitive, mergeable by sum).
    """
    idx = np.asarray(window_index).astype(np.int64, copy=False).reshape(-1)
    idx = idx[idx != PAD_INDEX]
    if idx.size == 0:
        return ordered, set_digest
    h = hashlib.sha256(bytes.fromhex(ordered))
    h.update(idx.astype("<i8").tobytes())
    total = (int(set_digest, 16) + int(mix64(idx).sum(dtype=np.uint64))) & _MASK64
    return h.hexdigest(), f"{total:016x}"


def combine_set_digests(digests: Sequence[str]) -> str:
    """Set digest of a union of disjoint deliveries: the sum of theirs mod 2**64."""
    return f"{sum(int(d, 16) for d in digests) & _MASK64:016x}"


def set_digest_of(window_indices: Any) -> str:
    """Set digest of a collection of window indices, from scratch (pads excluded)."""
    return update_digests("", ZERO_SET, window_indices)[1]
