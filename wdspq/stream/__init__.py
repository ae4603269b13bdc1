"""Streaming the shards into training: `ShardStream` (an IterableDataset) and `StreamLoader` (a DataLoader).

The package's modules, one job each:

- `dataset`: `ShardStream`, the stream of one export (a `webdataset.DataPipeline`) and `dist_topology`.
- `mixture`: `MixtureStream`, a `ShardStream` over a weighted mixture of exports (docs/mixtures.md).
- `loader`: `StreamLoader`, the DataLoader that counts batches and saves and loads the exact state.
- `control`: `ControlBlock`, the plan of the loader's next iteration as its workers receive it.
- `pipeline`: the stream's webdataset stages, user and batch stages, per-sample randomness (docs/stages.md).
- `reader`: reading runs of samples from shards under an error policy (`on_error`, placeholders).
- `ring`: batches from DataLoader workers to the main process, the shared-memory ring.

The names load on first use (as `wdspq`'s own do): `wdspq.mixture` reads shards with `stream.reader`
without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ShardStream": "dataset",
    "dist_topology": "dataset",
    "StreamLoader": "loader",
    "ControlBlock": "control",
    "MixtureStream": "mixture",
    "SampleReader": "reader",
    "SkippedSamplesWarning": "reader",
    "StageError": "pipeline",
    "sample_rng": "pipeline",
    "torch_generator": "pipeline",
    "torch_seed": "pipeline",
}

__all__ = list(_LAZY)


# Loaded with ShardStream: the kinds of stream `ShardStream(source)` builds for other sources, registered as
# their modules load (`ShardStream([Source, ...])` is a MixtureStream).
_KINDS = ("mixture",)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        if name == "ShardStream":
            for kind in _KINDS:
                importlib.import_module(f".{kind}", __name__)
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'wdspq.stream' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
