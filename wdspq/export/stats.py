"""Normalisation statistics of the exported numeric streams, merged in a fixed order (worker-count free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class RunningStats:
    """Per-feature count, mean, M2 (sum of squared deviations), min and max over real rows.

    Batches are merged with Chan's parallel update (numerically stable, unlike sum of squares); the
    chunks are merged in chunk order, so the result does not depend on the worker count.
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> RunningStats:
        z = np.zeros(dim, np.float64)
        return cls(0, z, z.copy(), np.full(dim, np.inf), np.full(dim, -np.inf))

    def add(self, rows: np.ndarray) -> None:
        if len(rows):
            r = np.asarray(rows, dtype=np.float64)
            mean = r.mean(0)
            self._merge(len(r), mean, ((r - mean) ** 2).sum(0), r.min(0), r.max(0))

    def merge(self, other: RunningStats) -> None:
        if other.count:
            self._merge(other.count, other.mean, other.m2, other.lo, other.hi)

    def _merge(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta * delta * (n_a * n_b / n)
        self.count = n
        self.lo = np.minimum(self.lo, lo)
        self.hi = np.maximum(self.hi, hi)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.{k}": np.asarray(getattr(self, k)) for k in ("count", "mean", "m2", "lo", "hi")}

    @classmethod
    def from_arrays(cls, d: Any, prefix: str) -> RunningStats:
        return cls(int(d[f"{prefix}.count"]), *(np.asarray(d[f"{prefix}.{k}"]) for k in ("mean", "m2", "lo", "hi")))

    def to_dict(self) -> dict[str, Any]:
        """Population statistics (ddof=0) over every real row of every window (rows repeat across windows)."""
        n = self.count
        return {
            "count": n,
            "mean": self.mean.tolist() if n else [],
            "std": np.sqrt(np.maximum(self.m2 / max(n, 1), 0.0)).tolist() if n else [],
            "min": self.lo.tolist() if n else [],
            "max": self.hi.tolist() if n else [],
        }


