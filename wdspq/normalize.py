"""Normalisation with the statistics an export records (or a table computes): `Normalize`.

The statistics are per numeric stream (actions and every signal) and per dimension, over every row
of the table, each row once (docs/shards.md). In a training loop:

    norm = wdspq.Normalize(stream.stats(), mode="mean_std")   # or ds.stats() for the map-style dataset
    batch = norm(batch)                                       # masked (padded) rows stay exactly zero
    actions = norm.inverse(policy(batch), "actions")          # back to the robot's units
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .errors import WdspqError

MODES = ("mean_std", "min_max")


def stats_tensors(stats: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, torch.Tensor]]:
    """The manifest's JSON statistics -> {stream: {count, mean, std, min, max}} as float32 tensors."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, st in stats.items():
        out[name] = {k: torch.tensor(st[k], dtype=torch.float32) for k in ("mean", "std", "min", "max")}
        out[name]["count"] = torch.tensor(int(st["count"]), dtype=torch.int64)
    return out


class Normalize:
    """Normalise the numeric streams of a batch (or sample) and map predictions back.

    `mode="mean_std"`: (x - mean) / std. `mode="min_max"`: to [-1, 1] by the recorded min and max.
    A dimension whose std (or range) is below `eps` is only shifted. `keys` picks the streams
    (default: every stream in `stats`). Rows whose `<key>_mask` is false stay zero, in both directions.

    A mixture's `stream.stats()` is a list, one entry per source: each sample (row of a batch) is then
    normalised by the statistics of its own `source_index`, so one robot's statistics never scale
    another's actions; `keys` defaults to every stream some source has statistics for (rows of a source
    without that stream, zeros with the mask false, are left as they are).
    """

    def __new__(cls, stats: Any = None, *args: Any, **kwargs: Any) -> Normalize:
        if cls is Normalize and isinstance(stats, (list, tuple)):
            return super().__new__(PerSourceNormalize)
        return super().__new__(cls)

    def __init__(self, stats: Mapping[str, Mapping[str, torch.Tensor]], mode: str = "mean_std",
                 keys: Iterable[str] | None = None, eps: float = 1e-8) -> None:
        if mode not in MODES:
            raise WdspqError(f"Normalize: mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.keys = list(keys) if keys is not None else list(stats)
        missing = [k for k in self.keys if k not in stats]
        if missing:
            raise WdspqError(f"Normalize: no statistics for {missing} (there are: {sorted(stats)})")
        self._shift: dict[str, torch.Tensor] = {}
        self._scale: dict[str, torch.Tensor] = {}
        for k in self.keys:
            st = stats[k]
            if mode == "mean_std":
                shift, scale = st["mean"], st["std"]
            else:
                shift, scale = (st["max"] + st["min"]) / 2, (st["max"] - st["min"]) / 2
            scale = torch.as_tensor(scale, dtype=torch.float32)
            self._shift[k] = torch.as_tensor(shift, dtype=torch.float32)
            self._scale[k] = torch.where(scale.abs() < eps, torch.ones_like(scale), scale)

    def _apply(self, x: torch.Tensor, key: str, mask: torch.Tensor | None, forward: bool) -> torch.Tensor:
        shift, scale = self._shift[key].to(x.device), self._scale[key].to(x.device)
        y = (x - shift) / scale if forward else x * scale + shift
        if mask is not None:
            y = y * mask.to(y.dtype).unsqueeze(-1)
        return y.to(x.dtype)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """A new dict: the selected streams normalised, everything else as it was."""
        out = dict(batch)
        for k in self.keys:
            if k in batch:
                out[k] = self._apply(torch.as_tensor(batch[k]), k, _mask(batch, k), forward=True)
        return out

    def inverse(self, x: Any, key: str | None = None) -> Any:
        """Undo the normalisation: of one tensor of stream `key` (e.g. predicted actions), or of a batch dict."""
        if isinstance(x, Mapping):
            out = dict(x)
            for k in self.keys:
                if k in x:
                    out[k] = self._apply(torch.as_tensor(x[k]), k, _mask(x, k), forward=False)
            return out
        if key is None or key not in self._shift:
            raise WdspqError(f"Normalize.inverse: name the stream of this tensor (one of {self.keys})")
        return self._apply(torch.as_tensor(x), key, None, forward=False)


def _mask(batch: Mapping[str, Any], key: str) -> torch.Tensor | None:
    m = batch.get(f"{key}_mask")
    return torch.as_tensor(m) if m is not None else None


class PerSourceNormalize(Normalize):
    """`Normalize` of a mixture (built as `Normalize(stream.stats())`): one `Normalize` per source,
    each row applied by its `source_index` (the batch or sample must carry it)."""

    def __init__(self, stats: Any, mode: str = "mean_std", keys: Iterable[str] | None = None,
                 eps: float = 1e-8) -> None:
        if not stats:
            raise WdspqError("Normalize: the list of per-source statistics is empty")
        if keys is None:
            keys = list(dict.fromkeys(k for st in stats for k in st))
        self.keys = list(keys)
        missing = [k for k in self.keys if not any(k in st for st in stats)]
        if missing:
            raise WdspqError(f"Normalize: no source has statistics for {missing} (there are: "
                             f"{sorted({k for st in stats for k in st})})")
        self.mode = mode
        # a stream only some sources have (e.g. renamed): each of those normalises it, the others leave it
        self.parts = [Normalize(st, mode, [k for k in self.keys if k in st], eps) for st in stats]

    def _rows(self, batch: Mapping[str, Any], forward: bool) -> dict[str, Any]:
        if "source_index" not in batch:
            raise WdspqError("Normalize with per-source statistics needs the batch's 'source_index' key")
        src = torch.as_tensor(batch["source_index"])
        out = dict(batch)
        for k in self.keys:
            if k not in batch:
                continue
            x = torch.as_tensor(batch[k])
            y = x.clone()
            for j, part in enumerate(self.parts):
                sel = src == j
                if k not in part._shift or not bool(sel.any()):
                    continue
                m = _mask(batch, k)
                if src.ndim == 0:
                    y = part._apply(x, k, m, forward)
                else:
                    y[sel] = part._apply(x[sel], k, m[sel] if m is not None else None, forward)
            out[k] = y
        return out

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """A new dict: each row's selected streams normalised by its own source's statistics."""
        return self._rows(batch, forward=True)

    def inverse(self, x: Any, key: str | None = None, source_index: Any = None) -> Any:
        """Undo the normalisation of a batch dict (with `source_index`), or of one tensor of stream `key`
        whose rows come from `source_index` (a tensor of the batch's source indices)."""
        if isinstance(x, Mapping):
            return self._rows(x, forward=False)
        if key is None or source_index is None:
            raise WdspqError("Normalize.inverse of a mixture: give the stream (key=) and the rows' source_index=")
        return self._rows({key: x, "source_index": source_index}, forward=False)[key]
