"""Where a table file is read from: a local path, or `s3://bucket/key.parquet` through the storage layer.

pyarrow needs a seekable file; for S3 each read of the Parquet reader (footer, column chunks) becomes
one ranged GET through wdspq's S3 storage (its endpoint, credentials and retries), so exports and
map-style datasets, Ray tasks included, can read a table straight from a bucket.
"""

from __future__ import annotations

import io
import os
from typing import Any

from .errors import SchemaError, WdspqError


def is_remote(path: str | os.PathLike) -> bool:
    return str(path).startswith("s3://")


def _split(path: str) -> tuple[Any, str]:
    from .storage import open_storage

    root, _, name = str(path).rpartition("/")
    if not name or root in ("s3:", "s3:/"):
        raise SchemaError(f"{path}: expected s3://bucket/path/to/table.parquet")
    return open_storage(root), name


class _RangeFile(io.RawIOBase):
    """A read-only, seekable view of one S3 object: each read is one ranged GET."""

    def __init__(self, storage: Any, name: str) -> None:
        self.storage, self.name = storage, name
        self.size = storage.size(name)
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + int(offset))
        return self.pos

    def readinto(self, b: Any) -> int:
        end = min(self.pos + len(b), self.size)
        if end <= self.pos:
            return 0
        with self.storage.open_read(self.name, self.pos, end) as f:
            data = f.read()
        n = len(data)
        memoryview(b)[:n] = data
        self.pos += n
        return n


def open_table(path: str | os.PathLike) -> Any:
    """What `pyarrow.parquet.ParquetFile` should open: the path itself, or a seekable S3 object."""
    if not is_remote(path):
        return str(path)
    import pyarrow as pa

    storage, name = _split(str(path))
    try:
        return pa.PythonFile(io.BufferedReader(_RangeFile(storage, name), buffer_size=1 << 20), mode="r")
    except WdspqError as e:
        raise SchemaError(f"{path}: cannot open the table: {e}") from None


def table_size_and_tail(path: str | os.PathLike, tail: int = 65536) -> tuple[int, bytes]:
    """The file's size and its last `tail` bytes (its identity in a manifest)."""
    if not is_remote(path):
        size = os.stat(path).st_size
        with open(path, "rb") as f:
            f.seek(max(0, size - tail))
            return size, f.read()
    storage, name = _split(str(path))
    size = storage.size(name)
    with storage.open_read(name, max(0, size - tail), size) as f:
        return size, f.read()
