"""`S3Storage`: objects are keys in an S3 (or S3-compatible) bucket; boto3 sessions shared per process,
requests retried within the S3 timeout, boto3 errors translated into `StorageError`s naming the URL."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..errors import StorageError
from .base import DEFAULT_READ_AHEAD, MiB, Storage, StorageReader, check_name
from .ranged import S3RangeRaw
from .s3_errors import DENIED_CODES, MISSING_CODES, client_error_code, is_retryable, root_cause
from .s3_time import attempt_timeouts, resolve_timeout, retry_wait

DEFAULT_MULTIPART_THRESHOLD = 16 * MiB
STAGING_PREFIX = "wdspq-s3-staging-"  # the per-process local staging folders of uploads
DEFAULT_MULTIPART_CHUNKSIZE = 16 * MiB

S3_OPTIONS = {
    "endpoint_url", "region", "access_key", "secret_key", "session_token", "profile", "addressing_style",
    "max_retries", "max_reopens", "backoff", "backoff_max", "connect_timeout", "read_timeout", "timeout",
    "multipart_threshold",
    "multipart_chunksize", "max_pool_connections", "staging_dir",
}


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

    def back_off(self, exc: BaseException, failures: int, started: float, failed: str, where: str,
                 also: Callable[[], None] | None = None) -> None:
        """The one retry sequence of an S3 request (`_call`, the range reader), after its failed attempt
        number `failures` of a request that began at `started`: StorageError "<failed> after N retries"
        once `max_retries` are spent; then the caller's own limit (`also`, which raises); else sleep the
        backoff, or StorageError naming `where` when the next attempt could not finish within `timeout`."""
        if failures > self.max_retries:
            raise StorageError(f"{failed} after {self.max_retries} retries: {type(exc).__name__}: {exc}") from exc
        if also is not None:
            also()
        time.sleep(retry_wait(exc, where, self.endpoint(), started, failures, self.backoff, self.backoff_max,
                              self.timeout, sum(self.attempt_timeouts)))

    def _call(self, name: str, action: str, fn: Any) -> Any:
        """`fn(client)` for one request, retried here (network faults, 5xx, throttling) within `timeout`
        and `max_retries`; other errors are raised as they are, for the caller to translate."""
        started, failures = time.monotonic(), 0
        while True:
            try:
                return fn(self._client("read"))
            except Exception as exc:
                if isinstance(exc, StorageError) or not is_retryable(exc):
                    raise
                failures += 1
                where = f"{self.url(name) if name else self.url()} ({action})"
                self.back_off(exc, failures, started, f"{where}: failed", where)

    # -- names ------------------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        check_name(name)
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
            code, status = client_error_code(exc)
            if code == "NoSuchBucket":
                return StorageError(f"{where}: bucket {self.bucket!r} does not exist")
            if code in MISSING_CODES or status == 404:
                return StorageError(f"{where}: no such object ({action})")
            if code in DENIED_CODES or status == 403:
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
            code, status = client_error_code(exc)
            return not (status == 404 or code in ("NoSuchBucket", "404", "NotFound"))
        except Exception:
            return True

    # -- reads ------------------------------------------------------------------------------------

    def open_read(self, name: str, start: int = 0, end: int | None = None, *,
                  buffer_size: int | None = None) -> StorageReader:
        raw = S3RangeRaw(self, name, start, end)
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
            code, status = client_error_code(exc)
            if status == 404 or code in MISSING_CODES:
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
                    self._stage_dir = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.staging_dir)
                except OSError as exc:
                    raise StorageError(f"cannot create a local staging folder for {self.url()}: {exc}") from exc
                weakref.finalize(self, shutil.rmtree, self._stage_dir, True)
        base = name.rsplit("/", 1)[-1]
        return Path(self._stage_dir) / f"{uuid.uuid4().hex[:12]}-{base}"

    def remove_staging(self, pids: Iterable[int] | None = None) -> None:
        """Staging folders are per process and unnamed by pid: with None, every one under `staging_dir`
        (when given) is removed; a terminated process's is removed with its spill folder."""
        if pids is None and self.staging_dir is not None:
            for p in Path(self.staging_dir).glob(f"{STAGING_PREFIX}*"):
                shutil.rmtree(p, ignore_errors=True)

    def commit(self, staging_path: str | os.PathLike, name: str) -> None:
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=self.multipart_threshold,
                                multipart_chunksize=self.multipart_chunksize)
        try:
            self._client().upload_file(os.fspath(staging_path), self.bucket, self._key(name), Config=config)
        except Exception as exc:
            raise self._error(root_cause(exc), name, f"upload of {staging_path}") from exc
        self.discard(staging_path)


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

