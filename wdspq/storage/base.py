"""The `Storage` interface shared by the local and S3 backends, object-name rules, the buffered range
reader, the atomic local commit and the parsing of storage URLs."""

from __future__ import annotations

import hashlib
import io
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import StorageError

MiB = 1 << 20
DEFAULT_READ_AHEAD = 8 * MiB
STAGING_MARK = ".tmp-"  # in the names of local staging files, which `list` never shows


def check_name(name: str) -> str:
    """Object names are relative '/'-separated paths without empty, '.' or '..' parts."""
    if not isinstance(name, str) or not name or name.startswith("/") or name.endswith("/"):
        raise StorageError(f"invalid object name {name!r}: expected a relative path like 'shards/x.tar'")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise StorageError(f"invalid object name {name!r}: empty, '.' or '..' path parts are not allowed")
    return name


def is_staging_name(basename: str) -> bool:
    """Whether a file name is a staging file of an unfinished write (never listed)."""
    return basename.startswith(".") and STAGING_MARK in basename


class StorageReader(io.BufferedReader):
    """A buffered sequential reader of bytes [start, end) of one object.

    `tell()` is the absolute byte offset in the object. `bytes_read` (bytes received from storage,
    read-ahead included), `reopens` (connections reopened after a fault) and `requests` (GetObject
    calls, 1 for local files' open) are counters for tests and benchmarks.
    """

    @property
    def url(self) -> str:
        return self.raw.url

    @property
    def bytes_read(self) -> int:
        return self.raw.bytes_read

    @property
    def reopens(self) -> int:
        return self.raw.reopens

    @property
    def requests(self) -> int:
        return self.raw.requests



class RangeRaw(io.RawIOBase):
    """Common part of the raw readers: an absolute position, an optional end and counters."""

    def __init__(self, url: str, start: int, end: int | None) -> None:
        super().__init__()
        if start < 0 or (end is not None and end < start):
            raise StorageError(f"{url}: invalid byte range start={start} end={end}")
        self.url = url
        self._pos = start
        self._end = end
        self.bytes_read = 0
        self.reopens = 0
        self.requests = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def readall(self) -> bytes:
        chunks = []
        while True:
            want = DEFAULT_READ_AHEAD if self._end is None else max(self._end - self._pos, 0)
            if want == 0:
                break
            buf = bytearray(want)
            n = self.readinto(buf)
            if not n:
                break
            chunks.append(bytes(buf[:n]) if n < want else bytes(buf))
        return b"".join(chunks)


class Storage(ABC):
    """A folder of named objects: the local and S3 backends share this interface.

    Names are relative '/'-separated paths (e.g. 'shards/train-000.tar', 'manifest.json').
    """

    read_ahead: int

    @abstractmethod
    def url(self, name: str = "") -> str:
        """A human-readable location of `name` (or of the root) for messages."""

    @abstractmethod
    def open_read(self, name: str, start: int = 0, end: int | None = None, *,
                  buffer_size: int | None = None) -> StorageReader:
        """Open bytes [start, end) of `name` for sequential reading (`end=None`: to the end).

        `end` past the object's end is clipped to it. The reader's `tell()` is the absolute offset.
        """

    def read_bytes(self, name: str) -> bytes:
        """The whole content of `name`."""
        with self.open_read(name) as f:
            return f.read()

    def sha256(self, name: str) -> tuple[int, str]:
        """(size in bytes, sha256 hex digest) of `name`, read once sequentially."""
        h = hashlib.sha256()
        size = 0
        with self.open_read(name) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
        return size, h.hexdigest()

    @abstractmethod
    def size(self, name: str) -> int:
        """The size of `name` in bytes."""

    @abstractmethod
    def exists(self, name: str) -> bool:
        """Whether `name` exists (on S3 a missing bucket raises instead of answering False)."""

    def stamp(self, name: str) -> str | None:
        """A token that changes whenever object `name` is replaced (None: missing). Readers compare the
        manifest's stamp at each shard open to notice an export rewritten under them."""
        return None

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted names under the root that start with `prefix` (a plain string prefix, as on S3).

        Staging files of unfinished writes are not listed.
        """

    @abstractmethod
    def delete(self, name: str) -> None:
        """Delete `name`; deleting a missing object is not an error."""

    @abstractmethod
    def put_bytes(self, name: str, data: bytes) -> None:
        """Write a small object atomically (readers see the old object or the new one, never a part)."""

    @abstractmethod
    def staging_path(self, name: str) -> Path:
        """A fresh local path to write a big file to, to be published as `name` by `commit`."""

    @abstractmethod
    def commit(self, staging_path: str | os.PathLike, name: str) -> None:
        """Publish a finished staging file under `name` atomically and remove the staging file.

        On failure the staging file is left in place for `discard`.
        """

    def remove_staging(self, pids: Iterable[int] | None = None) -> None:
        """Remove the staging files of unfinished writes into this storage: those of the processes `pids`
        (terminated mid-write), or with None all of them (only while no write is running, e.g. under the
        export's lock); they can be large and would keep a full disk full. Here: none to remove."""
        return None

    def discard(self, staging_path: str | os.PathLike) -> None:
        """Remove a staging file that will not be committed (missing is fine)."""
        try:
            os.unlink(staging_path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"{staging_path}: cannot remove staging file: {exc}") from exc

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def commit_file(staging_path: str | os.PathLike, final: Path) -> None:
    """Publish a finished local file atomically: fsync it, rename it over `final` (same folder), fsync
    the folder. Raises OSError for the caller to name."""
    fd = os.open(staging_path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(staging_path, final)
    fsync_dir(final.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename durable (best effort: some filesystems do not support fsync on folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def parse_url(url_or_path: str | os.PathLike) -> tuple[str, str, str]:
    """('s3', bucket, prefix) for `s3://bucket/prefix`, else ('local', path, '') for a local path or a
    `file://` URL; other schemes raise StorageError."""
    text = os.fspath(url_or_path)
    if text.startswith("s3://"):
        rest = text[len("s3://"):]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise StorageError(f"{text}: expected s3://bucket/prefix")
        return "s3", bucket, prefix
    if text.startswith("file://"):
        parsed = urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"{text}: file:// URLs must name a local path (file:///path)")
        text = unquote(parsed.path)
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
        raise StorageError(f"{text}: unsupported URL scheme (expected a local path, file:// or s3://)")
    return "local", text, ""
