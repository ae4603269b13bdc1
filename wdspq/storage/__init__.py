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
  upload), so a reader never sees a partial object under its final name. `remove_staging` removes the
  staging files of writes that died (their names are the storage's own business).
- Every failure is a `StorageError` naming the URL.

`S3Storage` takes endpoint, region and credentials from the standard AWS environment and config files
(`AWS_ENDPOINT_URL(_S3)`, `AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, ...) unless given explicitly. It holds
configuration only; boto3 clients are created lazily in each process, so the object pickles into
DataLoader workers and never shares a client across `fork`.

The package: `base` (the `Storage` interface, object names, the buffered range reader, the atomic
local commit, URL parsing), `local` (`LocalStorage`), `s3` (`S3Storage`, sessions, error
translation), `ranged` (the retrying S3 range reader), `s3_errors` (which S3 failures are missing,
denied or retryable) and `s3_time` (the time bound of one S3 request).
"""

from __future__ import annotations

import os
from typing import Any

from .base import DEFAULT_READ_AHEAD, MiB, Storage, StorageReader, parse_url
from .local import LocalStorage
from .s3 import DEFAULT_MULTIPART_CHUNKSIZE, DEFAULT_MULTIPART_THRESHOLD, S3_OPTIONS, S3Storage

__all__ = [
    "DEFAULT_MULTIPART_CHUNKSIZE",
    "DEFAULT_MULTIPART_THRESHOLD",
    "DEFAULT_READ_AHEAD",
    "LocalStorage",
    "MiB",
    "S3Storage",
    "Storage",
    "StorageReader",
    "open_storage",
]


def open_storage(url_or_path: str | os.PathLike | Storage, **options: Any) -> Storage:
    """A Storage for a local folder, a `file://` URL or `s3://bucket/prefix`.

    Options are the keyword arguments of `S3Storage`; for local folders only `read_ahead` applies and
    the S3-only options are ignored (so one set of options serves both). A Storage is returned as is.
    """
    if isinstance(url_or_path, Storage):
        return url_or_path
    unknown = set(options) - S3_OPTIONS - {"read_ahead"}
    if unknown:
        raise TypeError(f"open_storage: unknown options {sorted(unknown)}")
    kind, where, prefix = parse_url(url_or_path)
    if kind == "s3":
        return S3Storage(where, prefix, **options)
    local = {k: v for k, v in options.items() if k == "read_ahead"}
    return LocalStorage(where, **local)
