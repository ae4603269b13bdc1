"""The map-style reference dataset over the canonical table: `ds[i]` is the window with window_index i.

A thin torch front over the torch-free `table.episodes.EpisodeSource`, which reads, decodes, caches and
cuts: this class adds tensors (`ds[i]`, `stats()`) and the `torch.utils.data.Dataset` protocol.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .table.episodes import EpisodeSource


class ParquetWindowDataset(EpisodeSource, torch.utils.data.Dataset):
    """Map-style dataset of every window of a table, in canonical order (the reference for the shards).

    Files are opened lazily in each process, so the dataset works inside DataLoader workers. Each
    process keeps decoded episodes (video frames dominate) and the Parquet row groups they came from
    in one LRU bounded by `cache_bytes` (default 512 MiB) in all, because random access would otherwise
    decode the same clip over and over; a row group or episode larger than the bound is used and not kept.
    Text is tokenised once per episode at construction.
    """

    def stats(self) -> dict[str, dict[str, torch.Tensor]]:
        """Normalisation statistics of actions and every signal over every table row (each once), as
        tensors per stream; the same figures an export of this table records (`wdspq.Normalize`)."""
        from .normalize import stats_tensors
        from .table.stats import table_stats

        return stats_tensors({k: v.to_dict() for k, v in table_stats(self.path, self.meta).items()})

    def _check_index(self, i: int) -> int:
        if isinstance(i, (np.integer, torch.Tensor)):
            i = int(i)
        return super()._check_index(i)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v) for k, v in self.sample_numpy(i).items()}

    def __repr__(self) -> str:
        return (
            f"ParquetWindowDataset({Path(self.path).name!r}, episodes={self.num_episodes}, windows={len(self)}, "
            f"A={self.rspec.A}, streams={[s.name for s in self.meta.streams]})"
        )
