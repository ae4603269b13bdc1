"""Where a table file is read from: a local path, or `s3://bucket/key.parquet` through the storage layer.

pyarrow needs a seekable file; for S3 each read of the Parquet reader (footer, column chunks) becomes
one ranged GET through wdspq's S3 storage (its endpoint, credentials and retries), so exports and
map-style datasets, Ray tasks included, can read a table straight from a bucket.

Every reader of table data goes through `open_parquet` (Parquet page checksums verified where the file
has them) and `read_row_group`, which turns pyarrow's bare errors on damaged bytes ("Unexpected end of
stream", "ZSTD decompression failed", a CRC mismatch) into a `TableReadError` naming the table, the row
group (its rows and episodes) and the column.
"""

from __future__ import annotations

import io
import os
from typing import Any

from ..errors import SchemaError, TableReadError, WdspqError


def is_remote(path: str | os.PathLike) -> bool:
    return str(path).startswith("s3://")


def _split(path: str) -> tuple[Any, str]:
    from ..storage import open_storage

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


def open_parquet(path: str | os.PathLike) -> Any:
    """A `pyarrow.parquet.ParquetFile` of the table that verifies page checksums (tables without them read as before)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(open_table(path), page_checksum_verification=True)
    except WdspqError:
        raise
    except (pa.ArrowException, OSError) as e:
        raise TableReadError(f"{path}: not a readable Parquet file: {_first_line(e)}") from None


def read_row_group(pf: Any, path: str | os.PathLike, group: int, columns: list[str] | None = None) -> Any:
    """`pf.read_row_group(group, columns)`, with a failure named: table, row group, rows, episodes, column."""
    import pyarrow as pa

    try:
        return pf.read_row_group(group, columns=columns)
    except (WdspqError, MemoryError):
        raise
    except (pa.ArrowException, OSError) as e:
        raise _damaged(pf, path, group, columns, e) from None


def _damaged(pf: Any, path: str | os.PathLike, group: int, columns: list[str] | None, err: BaseException) -> TableReadError:
    """The error of an unreadable row group, after finding (column by column) which column it is."""
    md = pf.metadata
    start = sum(md.row_group(i).num_rows for i in range(group))
    rows = f"rows {start}..{start + md.row_group(group).num_rows - 1}"
    bad = None
    for c in columns if columns is not None else pf.schema_arrow.names:
        try:
            pf.read_row_group(group, columns=[c])
        except Exception:
            bad = c
            break
    try:
        ids = pf.read_row_group(group, columns=["episode_id"]).column(0).to_pylist()
        rows += f", episodes {ids[0]!r}..{ids[-1]!r}" if ids else ""
    except Exception:
        pass
    text = _first_line(err)
    why = ("a page checksum does not match (the bytes changed after the table was written)"
           if "checksum" in text.lower() or "crc" in text.lower() else f"damaged data ({text})")
    where = f"column {bad!r}" if bad else "a column"
    return TableReadError(
        f"{path}: row group {group} ({rows}), {where}: cannot be read: {why}; the table file is damaged: "
        "restore it from a copy or rebuild it"
    )


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) < 200 else text[:197] + "..."


def has_page_checksums(path: str | os.PathLike) -> bool | None:
    """Whether the table's pages carry CRC checksums (None: cannot tell; e.g. no row group).

    pyarrow does not expose page headers, so the first page header of the first column chunk is read
    and its Thrift compact encoding walked up to field 4 (`crc`): fields 1-3 are the required page type
    and sizes (i32), written in field order. Writers set checksums on every page or on none.
    """
    import pyarrow.parquet as pq

    md = pq.ParquetFile(open_table(path)).metadata
    if md.num_row_groups == 0 or md.num_columns == 0:
        return None
    col = md.row_group(0).column(0)
    offset = col.dictionary_page_offset if col.has_dictionary_page and col.dictionary_page_offset else col.data_page_offset
    if is_remote(path):
        storage, name = _split(str(path))
        with storage.open_read(name, offset, offset + 64) as f:
            head = f.read()
    else:
        with open(path, "rb") as f:
            f.seek(offset)
            head = f.read(64)
    field_id, pos = 0, 0
    while pos < len(head):
        b = head[pos]
        pos += 1
        if b == 0:  # end of the struct
            return False
        delta, kind = b >> 4, b & 0x0F
        if delta == 0:  # a long-form field id: not a page header as Parquet writers write it
            return None
        field_id += delta
        if field_id >= 4:
            return field_id == 4 and kind == 5
        if kind != 5:
            return None
        while pos < len(head) and head[pos] & 0x80:  # skip the zigzag varint
            pos += 1
        pos += 1
    return None
