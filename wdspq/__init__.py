"""wdspq: multimodal robot-learning episodes from one Parquet table into PyTorch, fast and exactly.

The map-style `ParquetWindowDataset` is the reference; `export_shards` writes pre-windowed WebDataset
shards; `ShardStream`/`StreamLoader` stream them with an exactly resumable cursor.
"""

from ._version import __version__ as __version__
from .cursor import merge_states
from .errors import (
    MediaError,
    SchemaError,
    ShardError,
    SpecError,
    StateError,
    StorageError,
    TokenizerError,
    WdspqError,
)
from .export import export_shards
from .seed_compat import TimeSeriesParquetDataset, to_device
from .stream import ShardStream, StreamLoader
from .table_dataset import ParquetWindowDataset
from .windows import WindowSpec

__all__ = [
    "MediaError",
    "SchemaError",
    "ShardError",
    "SpecError",
    "StateError",
    "StorageError",
    "TokenizerError",
    "WdspqError",
    "WindowSpec",
    "ParquetWindowDataset",
    "TimeSeriesParquetDataset",
    "to_device",
    "export_shards",
    "ShardStream",
    "StreamLoader",
    "merge_states",
]
