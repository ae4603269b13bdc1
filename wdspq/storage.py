"""Byte access to shards and manifests on local disk or S3, behind one small interface.

Export, stream and verify all go through a `Storage` (see README "Shards on S3"):

- `open_read(name, start, end)` streams bytes [start, end) sequentially with a large read-ahead. On S3
  it is one GetObject (with `Range` unless the whole object is read from 0); a connection that drops,
  resets, ends early or stalls past the read timeout is reopened with `Range: bytes=<offset>-` at the
  exact offset already consumed, with bounded retries and exponential backoff: nothing lost, nothing
  repeated. Exhausted retries raise `StorageError` naming the object and the offset.
- Every S3 request (a read waiting for its next bytes, a HEAD, a LIST, a PUT) is bounded in time: all
  its attempts and backoff together stay within `timeout` (default 60 s; `WDSPQ_S3_TIMEOUT`, the CLI's
  `--s3-timeout`), each attempt within clipped connect/read timeouts; an endpoint that accepts
  connections and never answers fails with a `StorageError` naming the endpoint, the object and the
  time spent.
- `put_bytes` writes small objects atomically; big files are written to `staging_path(name)` and then
  published with `commit` (local: a rename in the same folder; S3: a managed, multipart-above-a-threshold
  upload), so a reader never sees a partial object under its final name.
- Every failure is a `StorageError` naming the URL.

`S3Storage` takes endpoint, region and credentials from the standard AWS environment and config files
(`AWS_ENDPOINT_URL(_S3)`, `AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, ...) unless given explicitly. It holds
configuration only; boto3 clients are created lazily in each process, so the object pickles into
DataLoader workers and never shares a client across `fork`.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from abc import ABC, abstractmethod
from http.client import HTTPException
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from .errors import StorageError
from .s3_time import attempt_timeouts, resolve_timeout, retry_wait

MiB = 1 << 20
DEFAULT_READ_AHEAD = 8 * MiB
DEFAULT_MULTIPART_THRESHOLD = 16 * MiB
DEFAULT_MULTIPART_CHUNKSIZE = 16 * MiB
_STAGING_MARK = ".tmp-"


def _check_name(name: str) -> str:
    """Object names are relative '/'-separated paths without empty, '.' or '..' parts."""
    if not isinstance(name, str) or not name or name.startswith("/") or name.endswith("/"):
        raise StorageError(f"invalid object name {name!r}: expected a relative path like 'shards/x.tar'")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise StorageError(f"invalid object name {name!r}: empty, '.' or '..' path parts are not allowed")
    return name


def _is_staging_name(basename: str) -> bool:
    return basename.startswith(".") and _STAGING_MARK in basename


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


class _RangeRaw(io.RawIOBase):
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


class _LocalRangeRaw(_RangeRaw):
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


class LocalStorage(Storage):
    """Objects are files under a local folder `root` (created on first write)."""

    def __init__(self, root: str | os.PathLike, *, read_ahead: int = DEFAULT_READ_AHEAD) -> None:
        self.root = Path(root).expanduser().absolute()
        self.read_ahead = int(read_ahead)

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, name: str) -> Path:
        return self.root.joinpath(*_check_name(name).split("/"))

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
                if _is_staging_name(f):
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
        return final.with_name(f".{final.name}{_STAGING_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")

    def commit(self, staging_path: str | os.PathLike, name: str) -> None:
        final = self._path(name)
        try:
            fd = os.open(staging_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(staging_path, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            raise StorageError(f"{final}: cannot commit {staging_path}: {exc}") from exc


def _fsync_dir(path: Path) -> None:
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


# --------------------------------------------------------------------------------------------- S3

_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_DENIED_CODES = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                 "AllAccessDisabled", "ExpiredToken", "InvalidToken"}
_RETRY_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling",
                "ThrottlingException", "RequestTimeTooSkewed"}


def _client_error_code(exc: BaseException) -> tuple[str, int]:
    resp = getattr(exc, "response", None) or {}
    code = str(resp.get("Error", {}).get("Code", ""))
    status = int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _is_retryable(exc: BaseException) -> bool:
    """Network faults and server-side 5xx/throttling are retried; 4xx and configuration errors are not."""
    from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from urllib3.exceptions import HTTPError as Urllib3HTTPError

    if isinstance(exc, ClientError):
        code, status = _client_error_code(exc)
        return status >= 500 or code in _RETRY_CODES
    return isinstance(exc, (HTTPClientError, BotoConnectionError, IncompleteReadError, Urllib3HTTPError,
                            HTTPException, OSError, _ShortRead))


class _ShortRead(Exception):
    """The server closed a response body before its announced end."""


class S3Storage(Storage):
    """Objects are keys `prefix/name` in an S3 (or S3-compatible) bucket.

    Options given here win over the AWS environment/config. `max_retries` bounds the consecutive
    failed attempts (without a byte of progress) of one read before `StorageError`, and `max_reopens`
    the reopens of one read in all (a connection that trickles a few bytes and breaks, over and over,
    cannot keep a read alive forever); backoff doubles
    from `backoff` seconds up to `backoff_max`. `read_timeout` is how long a stalled connection is
    waited for. Uploads through `commit` use multipart above `multipart_threshold` bytes.

    `timeout` (default: $WDSPQ_S3_TIMEOUT, else 60 s) bounds one request in all: a read waiting for its
    next bytes, a HEAD, LIST, DELETE or PUT, every attempt and backoff included. Each attempt's connect
    timeout is clipped to a quarter of it and its read timeout to the rest, and another attempt is only
    started when it can finish in time; past that, `StorageError` names the endpoint, the object and
    the seconds spent. Uploads (`commit`) keep botocore's retries, with the same per-attempt timeouts.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        profile: str | None = None,
        addressing_style: str | None = None,
        read_ahead: int = DEFAULT_READ_AHEAD,
        max_retries: int = 5,
        max_reopens: int = 50,
        backoff: float = 0.2,
        backoff_max: float = 10.0,
        connect_timeout: float = 10.0,
        read_timeout: float = 20.0,
        timeout: float | None = None,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        multipart_chunksize: int = DEFAULT_MULTIPART_CHUNKSIZE,
        max_pool_connections: int = 10,
        staging_dir: str | os.PathLike | None = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise StorageError(f"invalid S3 bucket name {bucket!r}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self.access_key = access_key
        self.secret_key = secret_key
        self.session_token = session_token
        self.profile = profile
        self.addressing_style = addressing_style
        self.read_ahead = int(read_ahead)
        self.max_retries = int(max_retries)
        self.max_reopens = int(max_reopens)
        self.backoff = float(backoff)
        self.backoff_max = float(backoff_max)
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.timeout = resolve_timeout(timeout)
        self.multipart_threshold = int(multipart_threshold)
        self.multipart_chunksize = int(multipart_chunksize)
        self.max_pool_connections = int(max_pool_connections)
        self.staging_dir = None if staging_dir is None else str(staging_dir)
        self._reset_process_state()

    # -- per-process state: never pickled, rebuilt after fork -------------------------------------

    def _reset_process_state(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}
        self._stage_dir: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_pid", "_lock", "_clients", "_stage_dir"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_process_state()

    def __repr__(self) -> str:
        return f"S3Storage({self.url()!r}, endpoint_url={self.endpoint_url!r})"

    def _client(self, kind: str = "main") -> Any:
        """The boto3 client of this process: 'main' (botocore retries) or 'read' (retries are ours)."""
        if self._pid != os.getpid():
            self._reset_process_state()
        client = self._clients.get(kind)
        if client is None:
            with self._lock:
                client = self._clients.get(kind)
                if client is None:
                    client = self._clients[kind] = self._make_client(kind)
        return client

    def _make_client(self, kind: str) -> Any:
        from botocore.config import Config

        try:
            session = _session(self.access_key, self.secret_key, self.session_token, self.profile)
            endpoint = (self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                        or os.environ.get("AWS_ENDPOINT_URL"))
            region = self.region or os.environ.get("AWS_REGION") or session.region_name
            if region is None and endpoint:
                region = "us-east-1"  # S3-compatible servers accept any region; botocore needs one
            connect, read = self.attempt_timeouts
            kwargs: dict[str, Any] = dict(
                connect_timeout=connect,
                read_timeout=read,
                max_pool_connections=self.max_pool_connections,
            )
            if kind == "read":
                kwargs["retries"] = {"mode": "standard", "total_max_attempts": 1}
                kwargs["response_checksum_validation"] = "when_required"

            def make(style: str | None) -> Any:
                cfg = Config(**kwargs, s3={"addressing_style": style} if style else None)
                with _SESSIONS_LOCK:  # creating clients from one session is not thread-safe
                    return session.client("s3", endpoint_url=self.endpoint_url, region_name=region, config=cfg)

            style = self.addressing_style or ("path" if endpoint else None)
            client = make(style)
            if style is None and not _is_aws_endpoint(client.meta.endpoint_url):
                client = make("path")  # an endpoint from a config profile: MinIO-like servers need path style
            return client
        except Exception as exc:
            raise StorageError(f"{self.url()}: cannot create an S3 client: {exc}") from exc

    # -- time bounds ------------------------------------------------------------------------------

    @property
    def attempt_timeouts(self) -> tuple[float, float]:
        """(connect, read) timeouts of one attempt, clipped so that one attempt fits in `timeout`."""
        return attempt_timeouts(self.connect_timeout, self.read_timeout, self.timeout)

    def endpoint(self) -> str:
        """The endpoint URL requests go to (for messages)."""
        try:
            return str(self._client("read").meta.endpoint_url)
        except Exception:
            return str(self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
                       or "the default AWS endpoint")

    def _retry_wait(self, exc: BaseException, where: str, started: float, failures: int) -> float:
        """Backoff before attempt `failures + 1`, or StorageError when it could not finish within `timeout`."""
        return retry_wait(exc, where, self.endpoint(), started, failures, self.backoff, self.backoff_max,
                          self.timeout, sum(self.attempt_timeouts))

    def _call(self, name: str, action: str, fn: Any) -> Any:
        """`fn(client)` for one request, retried here (network faults, 5xx, throttling) within `timeout`
        and `max_retries`; other errors are raised as they are, for the caller to translate."""
        started, failures = time.monotonic(), 0
        while True:
            try:
                return fn(self._client("read"))
            except Exception as exc:
                if isinstance(exc, StorageError) or not _is_retryable(exc):
                    raise
                failures += 1
                where = f"{self.url(name) if name else self.url()} ({action})"
                if failures > self.max_retries:
                    raise StorageError(f"{where}: failed after {self.max_retries} retries: "
                                       f"{type(exc).__name__}: {exc}") from exc
                time.sleep(self._retry_wait(exc, where, started, failures))

    # -- names ------------------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        _check_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def url(self, name: str = "") -> str:
        key = self._key(name) if name else self.prefix
        return f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"

    def _error(self, exc: BaseException, name: str, action: str) -> StorageError:
        """Translate a boto3/botocore exception into a StorageError naming the URL."""
        from botocore.exceptions import ClientError, NoCredentialsError

        where = self.url(name) if name else self.url()
        if isinstance(exc, StorageError):
            return exc
        if isinstance(exc, ClientError):
            code, status = _client_error_code(exc)
            if code == "NoSuchBucket":
                return StorageError(f"{where}: bucket {self.bucket!r} does not exist")
            if code in _MISSING_CODES or status == 404:
                return StorageError(f"{where}: no such object ({action})")
            if code in _DENIED_CODES or status == 403:
                return StorageError(f"{where}: access denied ({action}: {code or status})")
            return StorageError(f"{where}: {action} failed: {code or status}: {exc}")
        if isinstance(exc, NoCredentialsError):
            return StorageError(f"{where}: no AWS credentials found ({action}); set AWS_ACCESS_KEY_ID/"
                                f"AWS_SECRET_ACCESS_KEY or a profile")
        return StorageError(f"{where}: {action} failed: {type(exc).__name__}: {exc}")

    def _bucket_exists(self) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._call("", "head bucket", lambda c: c.head_bucket(Bucket=self.bucket))
            return True
        except ClientError as exc:
            code, status = _client_error_code(exc)
            return not (status == 404 or code in ("NoSuchBucket", "404", "NotFound"))
        except Exception:
            return True

    # -- reads ------------------------------------------------------------------------------------

    def open_read(self, name: str, start: int = 0, end: int | None = None, *,
                  buffer_size: int | None = None) -> StorageReader:
        raw = _S3RangeRaw(self, name, start, end)
        try:
            raw.open_first()
        except BaseException:
            raw.close()
            raise
        return StorageReader(raw, buffer_size or self.read_ahead)

    def _head(self, name: str, action: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            key = self._key(name)
            return self._call(name, action, lambda c: c.head_object(Bucket=self.bucket, Key=key))
        except ClientError as exc:
            code, status = _client_error_code(exc)
            if status == 404 or code in _MISSING_CODES:
                if not self._bucket_exists():
                    raise StorageError(f"{self.url(name)}: bucket {self.bucket!r} does not exist") from exc
                return None
            raise self._error(exc, name, action) from exc
        except Exception as exc:
            raise self._error(exc, name, action) from exc

    def size(self, name: str) -> int:
        head = self._head(name, "size")
        if head is None:
            raise StorageError(f"{self.url(name)}: no such object (size)")
        return int(head["ContentLength"])

    def exists(self, name: str) -> bool:
        return self._head(name, "exists") is not None

    def stamp(self, name: str) -> str | None:
        head = self._head(name, "stamp")
        return None if head is None else f"{head.get('ETag')}:{head.get('LastModified')}"

    def list(self, prefix: str = "") -> list[str]:
        root = f"{self.prefix}/" if self.prefix else ""

        def listing(client: Any) -> list[str]:
            out: list[str] = []
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root + prefix):
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(root):]
                    if name and not name.endswith("/"):
                        out.append(name)
            return out

        try:
            return sorted(self._call("", f"list {prefix!r}", listing))
        except Exception as exc:
            raise self._error(exc, "", f"list {prefix!r}") from exc

    def delete(self, name: str) -> None:
        try:
            key = self._key(name)
            self._call(name, "delete", lambda c: c.delete_object(Bucket=self.bucket, Key=key))
        except Exception as exc:
            raise self._error(exc, name, "delete") from exc

    # -- writes -----------------------------------------------------------------------------------

    def put_bytes(self, name: str, data: bytes) -> None:
        try:
            key, body = self._key(name), bytes(data)
            self._call(name, "put", lambda c: c.put_object(Bucket=self.bucket, Key=key, Body=body))
        except Exception as exc:
            raise self._error(exc, name, "put") from exc

    def staging_path(self, name: str) -> Path:
        self._key(name)
        if self._pid != os.getpid():
            self._reset_process_state()
        with self._lock:
            if self._stage_dir is None or not os.path.isdir(self._stage_dir):
                try:
                    self._stage_dir = tempfile.mkdtemp(prefix="wdspq-s3-staging-", dir=self.staging_dir)
                except OSError as exc:
                    raise StorageError(f"cannot create a local staging folder for {self.url()}: {exc}") from exc
                weakref.finalize(self, shutil.rmtree, self._stage_dir, True)
        base = name.rsplit("/", 1)[-1]
        return Path(self._stage_dir) / f"{uuid.uuid4().hex[:12]}-{base}"

    def commit(self, staging_path: str | os.PathLike, name: str) -> None:
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=self.multipart_threshold,
                                multipart_chunksize=self.multipart_chunksize)
        try:
            self._client().upload_file(os.fspath(staging_path), self.bucket, self._key(name), Config=config)
        except Exception as exc:
            raise self._error(_root_cause(exc), name, f"upload of {staging_path}") from exc
        self.discard(staging_path)


def _root_cause(exc: BaseException) -> BaseException:
    """boto3's managed transfer wraps the ClientError that says why; unwrap it for the message."""
    from botocore.exceptions import ClientError

    seen = exc
    while seen is not None:
        if isinstance(seen, ClientError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


_SESSIONS: dict[tuple, Any] = {}
_SESSIONS_LOCK = threading.RLock()
_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                    "AWS_DEFAULT_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


def _session(access_key: str | None, secret_key: str | None, token: str | None, profile: str | None) -> Any:
    """A boto3 Session shared by the S3Storage objects of this process with the same credentials.

    Making a session loads botocore's data (~0.2 s); clients made from a warm one cost ~20 ms. The key
    holds the pid (never reuse across fork) and the credential variables (a changed environment gets a
    fresh session instead of cached credentials).
    """
    import boto3

    key = (os.getpid(), access_key, secret_key, token, profile, *(os.environ.get(v) for v in _CREDENTIAL_VARS))
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(key)
        if session is None:
            if len(_SESSIONS) > 32:
                _SESSIONS.clear()
            session = _SESSIONS[key] = boto3.session.Session(
                aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                aws_session_token=token, profile_name=profile)
        return session


def _is_aws_endpoint(url: str | None) -> bool:
    host = (urlparse(url or "").hostname or "").lower()
    return host.endswith(".amazonaws.com") or host.endswith(".amazonaws.com.cn")


class _S3RangeRaw(_RangeRaw):
    """Raw reader of one S3 object range that reopens at the consumed offset after a fault."""

    def __init__(self, storage: S3Storage, name: str, start: int, end: int | None) -> None:
        super().__init__(storage.url(name), start, end)
        self._s = storage
        self._name = name
        self._key = storage._key(name)
        self._open_ended = end is None  # reopen with 'bytes=<offset>-' unless the caller gave an end
        self._body: Any = None  # the urllib3 response of the current GetObject
        self._etag: str | None = None
        self._failures = 0  # consecutive failed attempts since the last byte of progress
        self._started = time.monotonic()  # when the current request began waiting (the S3 timeout's clock)

    def _get(self) -> None:
        """One GetObject from the current offset; sets the body and learns the object's end."""
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {"Bucket": self._s.bucket, "Key": self._key}
        if self._pos > 0 or not self._open_ended:
            last = "" if self._open_ended else str(self._end - 1)
            kwargs["Range"] = f"bytes={self._pos}-{last}"
        if self._etag:
            kwargs["IfMatch"] = self._etag  # the object must not change under a resumed read
        self.requests += 1
        try:
            resp = self._s._client("read").get_object(**kwargs)
        except ClientError as exc:
            code, status = _client_error_code(exc)
            if status == 416 or code == "InvalidRange":
                self._at_or_past_end(exc)
                return
            if status == 412 or code == "PreconditionFailed":
                raise StorageError(f"{self.url}: the object changed while it was being read "
                                   f"(at byte offset {self._pos})") from exc
            raise
        body = resp["Body"]
        if "Range" in kwargs:
            content_range = str(resp.get("ContentRange") or "")
            if not content_range.startswith(f"bytes {self._pos}-"):
                body.close()
                raise StorageError(f"{self.url}: the server answered the range request at byte offset "
                                   f"{self._pos} with Content-Range {content_range!r}")
        self._etag = self._etag or resp.get("ETag")
        length = int(resp.get("ContentLength", 0))
        if self._open_ended:
            self._end = self._pos + length
        elif self._pos + length < self._end:  # end past the object's end is clipped to it
            self._end = self._pos + length
        self._body = getattr(body, "_raw_stream", body)

    def _at_or_past_end(self, exc: BaseException) -> None:
        """A 416 answers a range starting at or past the end: empty when exactly at the end."""
        size = self._s.size(self._name)
        if self._pos == size:
            self._end = size
            self._body = None
            return
        raise StorageError(f"{self.url}: start offset {self._pos} is past the end of the object "
                           f"({size} bytes)") from exc

    def open_first(self) -> None:
        """The first GetObject: a missing object or bucket fails at once, network faults are retried.

        An empty range [start, start) makes no request.
        """
        if self._end is not None and self._end <= self._pos:
            return
        self._with_retries(self._get)
        if self._end is None:
            self._end = self._pos

    def _with_retries(self, fn: Any) -> None:
        self._started = time.monotonic()
        while True:
            try:
                fn()
                return
            except StorageError:
                raise
            except Exception as exc:
                self._close_body()
                if not _is_retryable(exc):
                    raise self._s._error(exc, self._name, f"read at byte offset {self._pos}") from exc
                self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        """Count a failed attempt; raise when retries are exhausted, else back off before the reopen."""
        self._failures += 1
        if self._failures > self._s.max_retries:
            raise StorageError(
                f"{self.url}: read failed at byte offset {self._pos} after {self._s.max_retries} retries: "
                f"{type(exc).__name__}: {exc}") from exc
        if self.reopens >= self._s.max_reopens:
            raise StorageError(
                f"{self.url}: read failed at byte offset {self._pos}: the connection broke {self.reopens + 1} "
                f"times during this read (max_reopens={self._s.max_reopens}); last: {type(exc).__name__}: {exc}"
            ) from exc
        where = f"{self.url}: read at byte offset {self._pos}"
        time.sleep(self._s._retry_wait(exc, where, self._started, self._failures))
        self.reopens += 1

    def _close_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            try:
                body.close()  # closes the connection instead of draining the rest of the object
            except Exception:
                pass

    def _read1(self, mv: memoryview) -> int:
        body = self._body
        if hasattr(body, "read1"):
            data = body.read1(len(mv), decode_content=False)
        else:
            data = body.read(len(mv))
        n = len(data)
        if n == 0:
            raise _ShortRead(f"connection closed at byte offset {self._pos}, expected {self._end}")
        mv[:n] = data
        return n

    def readinto(self, b: Any) -> int:
        """Read what the connection has ready (at least one byte unless at the end), reopening after faults.

        Short reads, like a socket's: the buffered reader above asks again, so the caller decodes the first
        samples while the rest of the range is still arriving, and a fault is met only by the read that
        needs bytes past it (every byte before it has been handed out).
        """
        mv = memoryview(b).cast("B")
        self._started = time.monotonic()
        while self._pos < self._end and len(mv):
            try:
                if self._body is None:
                    self._get()
                    if self._body is None:  # 416 exactly at the end
                        break
                    continue  # _get may have clipped the end
                n = self._read1(mv[: self._end - self._pos])
            except StorageError:
                raise
            except Exception as exc:
                self._close_body()
                if not _is_retryable(exc):
                    raise self._s._error(exc, self._name, f"read at byte offset {self._pos}") from exc
                self._failed(exc)
                continue
            self._pos += n
            self.bytes_read += n
            self._failures = 0
            if self._pos >= self._end:
                self._close_body()
            return n
        if self._pos >= self._end:
            self._close_body()
        return 0

    def close(self) -> None:
        self._close_body()
        super().close()


# ------------------------------------------------------------------------------------------ open

_S3_OPTIONS = {
    "endpoint_url", "region", "access_key", "secret_key", "session_token", "profile", "addressing_style",
    "max_retries", "max_reopens", "backoff", "backoff_max", "connect_timeout", "read_timeout", "timeout",
    "multipart_threshold",
    "multipart_chunksize", "max_pool_connections", "staging_dir",
}


def open_storage(url_or_path: str | os.PathLike | Storage, **options: Any) -> Storage:
    """A Storage for a local folder, a `file://` URL or `s3://bucket/prefix`.

    Options are the keyword arguments of `S3Storage`; for local folders only `read_ahead` applies and
    the S3-only options are ignored (so one set of options serves both). A Storage is returned as is.
    """
    if isinstance(url_or_path, Storage):
        return url_or_path
    unknown = set(options) - _S3_OPTIONS - {"read_ahead"}
    if unknown:
        raise TypeError(f"open_storage: unknown options {sorted(unknown)}")
    text = os.fspath(url_or_path)
    if text.startswith("s3://"):
        rest = text[len("s3://"):]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise StorageError(f"{text}: expected s3://bucket/prefix")
        return S3Storage(bucket, prefix, **options)
    if text.startswith("file://"):
        parsed = urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"{text}: file:// URLs must name a local path (file:///path)")
        text = unquote(parsed.path)
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
        raise StorageError(f"{text}: unsupported URL scheme (expected a local path, file:// or s3://)")
    local = {k: v for k, v in options.items() if k == "read_ahead"}
    return LocalStorage(text, **local)
