"""Export a table into pre-windowed, indexed WebDataset shards (`export_shards`; docs/shards.md)."""

from ..shardfmt.names import shard_assignment, shard_name
from .exporter import EPISODES_PER_CHUNK, export_shards
from .plan import SPILL_PREFIX, estimate_export, format_estimate

__all__ = ["EPISODES_PER_CHUNK", "SPILL_PREFIX", "estimate_export", "export_shards", "format_estimate",
           "shard_assignment", "shard_name"]
