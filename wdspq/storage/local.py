"""`LocalStorage`: objects are files under a local folder; writes are staged beside their final name
and published with an atomic rename."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import StorageError
from .base import (
    DEFAULT_READ_AHEAD,
    STAGING_MARK,
    RangeRaw,
    Storage,
    StorageReader,
    check_name,
    commit_file,
    is_staging_name,
)


class _LocalRangeRaw(RangeRaw):
    def __init__(self, path: Path, url: str, start: int, end: int | None) -> None:
        super().__init__(url, start, end)
        try:
            self._f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        except FileNotFoundError:
            raise StorageError(f"{url}: no such file") from None
        except OSError as exc:
            raise StorageError(f"{url}: cannot open: {exc}") from exc
        self.requests = 1
        try:
            size = os.fstat(self._f.fileno()).st_size
            if start > size:
                raise StorageError(f"{url}: start offset {start} is past the end of the file ({size} bytes)")
            self._end = size if end is None else min(end, size)
            if start:
                self._f.seek(start)
        except BaseException:
            self._f.close()
            raise

    def readinto(self, b: Any) -> int:
        mv = memoryview(b).cast("B")
        want = min(len(mv), self._end - self._pos)
        if want <= 0:
            return 0
        try:
            n = self._f.readinto(mv[:want])
        except OSError as exc:
            raise StorageError(f"{self.url}: read failed at byte offset {self._pos}: {exc}") from exc
        n = n or 0
        self._pos += n
        self.bytes_read += n
        return n

    def local_file(self) -> tuple[int, int]:
        """(file descriptor, readable end): lets a reader map this byte range instead of reading it."""
        return self._f.fileno(), self._end

    def seek_to(self, pos: int) -> None:
        """Continue reading at absolute offset `pos` (a reader that mapped the bytes before it)."""
        self._f.seek(pos)
        self._pos = pos

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


class LocalStorage(Storage):
    """Objects are files under a local folder `root` (created on first write)."""

    def __init__(self, root: str | os.PathLike, *, read_ahead: int = DEFAULT_READ_AHEAD) -> None:
        self.root = Path(root).expanduser().absolute()
        self.read_ahead = int(read_ahead)

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, name: str) -> Path:
        return self.root.joinpath(*check_name(name).split("/"))

    def url(self, name: str = "") -> str:
        return str(self._path(name)) if name else str(self.root)

    def open_read(self, name: str, start: int = 0, end: int | None = None, *,
                  buffer_size: int | None = None) -> StorageReader:
        raw = _LocalRangeRaw(self._path(name), self.url(name), start, end)
        return StorageReader(raw, buffer_size or self.read_ahead)

    def read_bytes(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"{self.url(name)}: no such file") from None
        except OSError as exc:
            raise StorageError(f"{self.url(name)}: cannot read: {exc}") from exc

    def size(self, name: str) -> int:
        try:
            return self._path(name).stat().st_size
        except FileNotFoundError:
            raise StorageError(f"{self.url(name)}: no such file") from None
        except OSError as exc:
            raise StorageError(f"{self.url(name)}: cannot stat: {exc}") from exc

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def stamp(self, name: str) -> str | None:
        try:
            st = self._path(name).stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"{self.url(name)}: cannot stat: {exc}") from exc
        return f"{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"  # a commit is a new inode

    def list(self, prefix: str = "") -> list[str]:
        base = self.root
        head, sep, _ = prefix.rpartition("/")
        if sep:
            base = self.root.joinpath(*[p for p in head.split("/") if p])
        if not base.is_dir():
            return []
        out = []
        for dirpath, _dirs, files in os.walk(base):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for f in files:
                if is_staging_name(f):
                    continue
                rel = f if rel_dir == "." else f"{rel_dir}/{f}"
                if rel.startswith(prefix):
                    out.append(rel)
        return sorted(out)

    def delete(self, name: str) -> None:
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"{self.url(name)}: cannot delete: {exc}") from exc

    def put_bytes(self, name: str, data: bytes) -> None:
        tmp = self.staging_path(name)
        try:
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
            except OSError as exc:  # e.g. ENOSPC, which names no file by itself
                raise StorageError(f"{self.url(name)}: cannot write {tmp}: {exc.strerror or exc}") from None
            self.commit(tmp, name)
        except BaseException:
            self.discard(tmp)
            raise

    def staging_path(self, name: str) -> Path:
        final = self._path(name)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{final.parent}: cannot create folder: {exc}") from exc
        return final.with_name(f".{final.name}{STAGING_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")

    def remove_staging(self, pids: Iterable[int] | None = None) -> None:
        if not self.root.is_dir():
            return
        patterns = [f".*{STAGING_MARK}*"] if pids is None else [f".*{STAGING_MARK}{pid}-*" for pid in pids]
        for pattern in patterns:
            for p in self.root.glob(pattern):
                p.unlink(missing_ok=True)

    def commit(self, staging_path: str | os.PathLike, name: str) -> None:
        final = self._path(name)
        try:
            commit_file(staging_path, final)
        except OSError as exc:
            raise StorageError(f"{final}: cannot commit {staging_path}: {exc}") from exc

