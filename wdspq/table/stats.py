"""Normalisation statistics of a table's numeric streams, merged in a fixed order (worker-count free).

What an export records in its manifest and `ParquetWindowDataset.stats()` returns, from one function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class RunningStats:
    """Per-feature count, mean, M2 (sum of squared deviations), min and max over real rows.

    Batches of rows are merged with Chan's parallel update (numerically stable, unlike sum of squares).
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

    def _merge(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta * delta * (n_a * n_b / n)
        self.count = n
        self.lo = np.minimum(self.lo, lo)
        self.hi = np.maximum(self.hi, hi)

    def to_dict(self) -> dict[str, Any]:
        """Population statistics (ddof=0) over the rows added."""
        n = self.count
        return {
            "count": n,
            "mean": self.mean.tolist() if n else [],
            "std": np.sqrt(np.maximum(self.m2 / max(n, 1), 0.0)).tolist() if n else [],
            "min": self.lo.tolist() if n else [],
            "max": self.hi.tolist() if n else [],
        }




def table_stats(path: str, meta: Any) -> dict[str, RunningStats]:
    """Statistics of actions and every signal stream over every row of the table (each row once).

    Reads only the numeric columns, row group by row group, merged in table order: the same floats
    whatever the number of export workers, and no video is decoded.
    """
    from .. import interrupt
    from .file import open_parquet, read_row_group

    streams = [meta.actions, *meta.signals]
    out = {s.name: RunningStats.empty(s.width) for s in streams}
    with open_parquet(path) as pf:
        for g in range(pf.num_row_groups):
            interrupt.check()  # a safe point for SIGTERM (the export defers it while its pools run)
            t = read_row_group(pf, path, g, [s.column for s in streams])
            for s in streams:
                flat = t.column(s.column).combine_chunks().flatten().flatten()
                out[s.name].add(flat.to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, s.width))
    return out
