"""The retrying reader of one S3 object range: a fault reopens the connection at the exact offset
already consumed (`Range: bytes=<offset>-`), with bounded retries and backoff within the S3 timeout,
so nothing is lost and nothing repeated."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..errors import StorageError
from .base import RangeRaw
from .s3_errors import ShortRead, client_error_code, is_retryable

if TYPE_CHECKING:
    from .s3 import S3Storage


class S3RangeRaw(RangeRaw):
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
            code, status = client_error_code(exc)
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
                self._recover(exc)

    def _recover(self, exc: Exception) -> None:
        """After a failed attempt (not a StorageError): drop the connection, then raise the translated error
        unless `exc` is retryable, else count the failure and back off (the one retry sequence of a read)."""
        self._close_body()
        if not is_retryable(exc):
            raise self._s._error(exc, self._name, f"read at byte offset {self._pos}") from exc
        self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        """Count a failed attempt; raise when retries are exhausted, else back off before the reopen."""
        self._failures += 1

        def reopens_left() -> None:
            if self.reopens >= self._s.max_reopens:
                raise StorageError(
                    f"{self.url}: read failed at byte offset {self._pos}: the connection broke {self.reopens + 1} "
                    f"times during this read (max_reopens={self._s.max_reopens}); last: {type(exc).__name__}: {exc}"
                ) from exc

        self._s.back_off(exc, self._failures, self._started, f"{self.url}: read failed at byte offset {self._pos}",
                         f"{self.url}: read at byte offset {self._pos}", reopens_left)
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
            raise ShortRead(f"connection closed at byte offset {self._pos}, expected {self._end}")
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
                self._recover(exc)
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

