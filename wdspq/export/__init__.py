"""Export a table into pre-windowed, indexed WebDataset shards (`export_shards`; docs/shards.md)."""

from .local import EPISODES_PER_CHUNK, export_shards
from .phases import shard_name
from .plan import SPILL_PREFIX, estimate_export, format_estimate, shard_assignment

__all__ = ["EPISODES_PER_CHUNK", "SPILL_PREFIX", "estimate_export", "export_shards", "format_estimate",
           "shard_assignment", "shard_name"]
