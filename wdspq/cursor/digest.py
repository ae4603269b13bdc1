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
    return _chain(ordered, idx), _add_to_set(set_digest, idx)


def _chain(ordered: str, idx: np.ndarray) -> str:
    """The ordered chain after one batch of real indices (see `update_digests`)."""
    return hashlib.sha256(bytes.fromhex(ordered) + idx.astype("<i8").tobytes()).hexdigest()


def _add_to_set(set_digest: str, idx: np.ndarray) -> str:
    """The set digest with real indices `idx` added (see `update_digests`)."""
    return f"{(int(set_digest, 16) + int(mix64(idx).sum(dtype=np.uint64))) & _MASK64:016x}"


class RankDigests:
    """A rank's two audit digests over the batches it delivered, folded lazily (`update_digests`'s values).

    Why: folding a batch costs ~50 us of numpy and hashing calls, on the main process of a loader, whose
    per-batch work is what bounds a loader with workers; appending costs ~1 us, and folding many batches
    at once hashes each index once (one `mix64` call)."""

    FOLD_EVERY = 256  # batches kept before folding (a few KB)

    def __init__(self, ordered: str = "", set_digest: str = ZERO_SET) -> None:
        self._ordered, self._set = ordered, set_digest
        self._pending: list[np.ndarray] = []

    def add(self, window_index: Any) -> None:
        """Record one batch's ``window_index`` values (pads, ``-1``, excluded when folded); copied, since a
        batch's memory may be reused once it is freed."""
        self._pending.append(np.array(window_index, dtype=np.int64).reshape(-1))
        if len(self._pending) >= self.FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        batches, self._pending = self._pending, []
        if not batches:
            return
        idx = np.concatenate(batches)
        real = idx[idx != PAD_INDEX]
        if real.size == 0:
            return
        ordered = self._ordered
        no_pads = real.size == idx.size
        for b in batches:
            if not no_pads:
                b = b[b != PAD_INDEX]
            if b.size:
                ordered = _chain(ordered, b)
        self._ordered, self._set = ordered, _add_to_set(self._set, real)

    @property
    def ordered(self) -> str:
        """The ordered chain (see `update_digests`)."""
        self._fold()
        return self._ordered

    @property
    def set_digest(self) -> str:
        """The set digest (see `update_digests`)."""
        self._fold()
        return self._set


def combine_set_digests(digests: Sequence[str]) -> str:
    """Set digest of a union of disjoint deliveries: the sum of theirs mod 2**64."""
    return f"{sum(int(d, 16) for d in digests) & _MASK64:016x}"


def set_digest_of(window_indices: Any) -> str:
    """Set digest of a collection of window indices, from scratch (pads excluded)."""
    return update_digests("", ZERO_SET, window_indices)[1]
