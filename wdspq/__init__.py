"""wdspq: multimodal robot-learning episodes from one Parquet table into PyTorch, fast and exactly.

The map-style `ParquetWindowDataset` is the reference; `export_shards` writes pre-windowed WebDataset
shards; `ShardStream`/`StreamLoader` stream them with an exactly resumable cursor.
"""

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
from .seed_compat import TimeSeriesParquetDataset, to_device
from .table_dataset import ParquetWindowDataset
from .windows import WindowSpec

__version__ = "0.1.0"

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
]
