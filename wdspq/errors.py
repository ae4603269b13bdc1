"""The wdspq error hierarchy: every library error derives from WdspqError so callers catch one type."""

from __future__ import annotations


class WdspqError(Exception):
    """Base class of every error wdspq raises on bad input or bad state."""


class SchemaError(WdspqError):
    """A table (or a source being converted into one) violates the table schema."""


class TableReadError(SchemaError):
    """A table's data cannot be read back: damaged pages, a page checksum mismatch, a truncated chunk."""


class SpecError(WdspqError):
    """A window spec is invalid, or does not fit the table it is applied to."""


class TokenizerError(WdspqError):
    """The requested tokenizer cannot be loaded."""


class MediaError(WdspqError):
    """Image or video bytes cannot be encoded or decoded."""


class ShardError(WdspqError):
    """A shard, its manifest or one of its members is missing, corrupt or inconsistent."""


class StateError(WdspqError):
    """A loader state does not match the stream it is loaded into, or is used at the wrong moment."""


class StorageError(WdspqError):
    """Reading or writing local files or S3 objects failed (after retries, where retries apply)."""


class ExportChangedError(ShardError):
    """The export was rewritten (e.g. `wdspq export --overwrite`) while a reader was using it: reading on
    would mix two exports, so this is raised under every error policy."""
