"""The per-shard index: a sidecar `shard-NNNNNN.idx.npy` next to each shard (`names.index_name`; docs/shards.md).

It is an int64 array of shape (samples, 2): each sample's byte offset in the tar (its first member
header) and its length in bytes (all its members, headers and padding). Samples are contiguous, so
`offset[i] + length[i] == offset[i + 1]`. The manifest records each index's size and sha256, so the
manifest stays O(shards) and a reader loads only the indexes of the shards it opens.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from ..errors import ShardError

TAR_BLOCK = 512


def index_bytes(spans: Any) -> bytes:
    """The sidecar's bytes for an (n, 2) array of (offset, length) (shared frames: (n, 4)): npy, deterministic header."""
    arr = np.asarray(spans, dtype="<i8")
    arr = np.ascontiguousarray(arr if arr.ndim == 2 and arr.shape[1] == 4 else arr.reshape(-1, 2))
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def spans_from_offsets(offsets: Any) -> np.ndarray:
    """Version 1 manifests list samples+1 start offsets inline: -> (n, 2) spans."""
    off = np.asarray(offsets, dtype=np.int64)
    return np.stack([off[:-1], np.diff(off)], axis=1) if len(off) > 1 else np.zeros((0, 2), np.int64)


def check_spans(spans: np.ndarray, samples: int, shard_bytes: int | None, where: str) -> np.ndarray:
    """An index checked against its shard entry: shape, contiguity from byte 0, within the shard."""
    if spans.shape != (samples, 2):
        raise ShardError(f"{where}: index has shape {spans.shape}, the manifest's shard has {samples} samples")
    if samples == 0:
        return spans
    off, length = spans[:, 0], spans[:, 1]
    if off[0] != 0 or np.any(length < TAR_BLOCK) or np.any(off % TAR_BLOCK) or np.any(length % TAR_BLOCK):
        raise ShardError(f"{where}: index is corrupt (offsets must start at 0 and lie on 512-byte tar blocks)")
    if np.any(off[1:] != off[:-1] + length[:-1]):
        bad = int(np.flatnonzero(off[1:] != off[:-1] + length[:-1])[0]) + 1
        raise ShardError(f"{where}: index is corrupt: sample {bad} does not start where sample {bad - 1} ends")
    end = int(off[-1] + length[-1])
    if shard_bytes is not None and end + 2 * TAR_BLOCK > shard_bytes:
        raise ShardError(f"{where}: index is corrupt: its samples end at byte {end}, past the shard's {shard_bytes} bytes")
    return spans


def parse_index(data: bytes, samples: int, shard_bytes: int | None, where: str) -> np.ndarray:
    """Sidecar bytes -> checked (n, 2) int64 spans (read-only array)."""
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:
        raise ShardError(f"{where}: index is not a .npy array: {type(e).__name__}: {e}") from None
    if arr.dtype != np.dtype("<i8") or arr.ndim != 2:
        raise ShardError(f"{where}: index must be int64 of shape (samples, 2), got {arr.dtype} {arr.shape}")
    if arr.shape[1] == 4:  # shared frames: each sample's member and its frame pack
        from .shared import check_shared_spans

        return check_shared_spans(arr, samples, shard_bytes, where)
    return check_spans(arr, samples, shard_bytes, where)
