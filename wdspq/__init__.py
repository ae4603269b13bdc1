"""wdspq: multimodal robot-learning episodes from one Parquet table into PyTorch, fast and exactly.

The map-style `ParquetWindowDataset` is the reference; `export_shards` writes pre-windowed WebDataset
shards; `ShardStream`/`StreamLoader` stream them with an exactly resumable cursor.

Heavy names (anything that needs torch, webdataset or transformers) load on first use, so `import wdspq`
and the command line start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__ as __version__
from .errors import (
    MediaError,
    SchemaError,
    ShardError,
    SpecError,
    StateError,
    StorageError,
    TableReadError,
    TokenizerError,
    WdspqError,
)
from .windows import WindowSpec

_LAZY = {
    "merge_states": "cursor",
    "Normalize": "normalize",
    "show_window": "viz",
    "export_shards": "export",
    "TimeSeriesParquetDataset": "seed_compat",
    "to_device": "seed_compat",
    "ShardStream": "stream",
    "StreamLoader": "stream",
    "Source": "mixture",
    "StageError": "stream",
    "sample_rng": "stream",
    "torch_generator": "stream",
    "torch_seed": "stream",
    "ParquetWindowDataset": "table_dataset",
    # writing your own importer (README "Writing your own importer")
    "TableWriter": "table",
    "Episode": "table",
    "actions_stream": "table",
    "signal_stream": "table",
    "camera_stream": "table",
    "image_stream": "table",
    "encode_clip": "media",
    "ClipWriter": "media",
    "encode_png": "media",
    "build_from_lerobot": "build",
    "build_from_robomimic": "build",
    # the LeRobot front (README "Training a LeRobot policy on wdspq shards")
    "to_lerobot": "lerobot_front",
    "lerobot_frames_to_float": "lerobot_front",
    "lerobot_stats": "lerobot_front",
}
_SUBMODULES = ("build", "cursor", "export", "media", "mixture", "normalize", "shardfmt", "storage", "stream",
               "table", "table_dataset", "text", "viz", "windows")

__all__ = [
    "MediaError",
    "SchemaError",
    "ShardError",
    "SpecError",
    "StateError",
    "StorageError",
    "TableReadError",
    "TokenizerError",
    "WdspqError",
    "WindowSpec",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'wdspq' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
