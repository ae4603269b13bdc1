"""The names of an export's files and where a window lives in it (docs/shards.md "Files of an export").

Shard `i` is `shard-NNNNNN.tar` (six digits, zero-padded), its index sidecar `shard-NNNNNN.idx.npy`;
the manifest and the zstd dictionary sit beside them. Every name is built and parsed here only.
Which windows a shard holds is the export's seeded assignment (`shard_assignment`): a permutation of
all windows (canonical order without shuffle) cut into consecutive runs of `samples_per_shard`.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..errors import WdspqError

SHARD_PREFIX = "shard-"
SHARD_SUFFIX = ".tar"
INDEX_SUFFIX = ".idx.npy"
_DIGITS = 6
_SHARD_RE = re.compile(r"^shard-(\d{6})\.tar$")
_INDEX_RE = re.compile(r"^shard-(\d{6})" + re.escape(INDEX_SUFFIX) + "$")


def shard_name(i: int) -> str:
    """Shard number `i` -> `shard-00000i.tar`."""
    return f"{SHARD_PREFIX}{i:0{_DIGITS}d}{SHARD_SUFFIX}"


def index_name(shard: str | int) -> str:
    """A shard's index sidecar: `shard-000012.tar` (or shard number 12) -> `shard-000012.idx.npy`."""
    name = shard_name(shard) if isinstance(shard, int) else shard
    stem = name[: -len(SHARD_SUFFIX)] if name.endswith(SHARD_SUFFIX) else name
    return stem + INDEX_SUFFIX


def parse_shard_index(name: str) -> int | None:
    """`shard-000012.tar` -> 12; None for any other name (an index sidecar included)."""
    m = _SHARD_RE.match(name)
    return int(m.group(1)) if m else None


def is_export_file(name: str) -> bool:
    """Whether `name` is a shard or a shard's index sidecar (what a replaced export leaves to delete)."""
    return bool(_SHARD_RE.match(name) or _INDEX_RE.match(name))


def shard_assignment(n_windows: int, samples_per_shard: int, seed: int, shuffle: bool) -> list[np.ndarray]:
    """Window indices of each shard in write order: a seeded permutation cut into consecutive runs."""
    order = np.random.default_rng(seed).permutation(n_windows) if shuffle else np.arange(n_windows, dtype=np.int64)
    order = order.astype(np.int32) if n_windows < 2**31 else order  # 4 bytes a window (the same order)
    return [order[i : i + samples_per_shard] for i in range(0, n_windows, samples_per_shard)]


def locate_window(manifest: dict[str, Any], window: int) -> tuple[int, int]:
    """(shard number, sample position in it) of window `window` in the export `manifest` describes (its
    parsed JSON), from the export's seeded assignment; the caller reads that one sample."""
    n = int(manifest["num_windows"])
    if not 0 <= window < n:
        raise WdspqError(f"window {window} out of range (the export has {n})")
    per = int(manifest["samples_per_shard"])
    order = np.concatenate(shard_assignment(n, per, int(manifest["seed"]), bool(manifest["shuffle"])))
    return divmod(int(np.flatnonzero(order == window)[0]), per)
