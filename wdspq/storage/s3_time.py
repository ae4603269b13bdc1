"""The time bound of one S3 request (README "Shards on S3"): every attempt and backoff of a read waiting
for its next bytes, a HEAD, LIST, DELETE or PUT together take at most `timeout` seconds.

`S3Storage` (storage/s3.py) applies the rule: its clients get the per-attempt timeouts of `attempt_timeouts`,
and its one retry sequence (`S3Storage.back_off`) asks `retry_wait` before each new attempt.
"""

from __future__ import annotations

import os
import time

from ..errors import StorageError

DEFAULT_S3_TIMEOUT = 60.0  # seconds one S3 request may take, every attempt and backoff included
S3_TIMEOUT_ENV = "WDSPQ_S3_TIMEOUT"


def resolve_timeout(value: float | None) -> float:
    """The bound: `value`, else $WDSPQ_S3_TIMEOUT, else DEFAULT_S3_TIMEOUT; a positive finite number."""
    where = "timeout"
    if value is None:
        text = os.environ.get(S3_TIMEOUT_ENV, "").strip()
        if not text:
            return DEFAULT_S3_TIMEOUT
        where = f"${S3_TIMEOUT_ENV}"
        try:
            value = float(text)
        except ValueError:
            raise StorageError(f"{where} is {text!r}; expected the S3 timeout in seconds (e.g. 60)") from None
    value = float(value)
    if not (value > 0 and value != float("inf")):
        raise StorageError(f"{where} is {value!r}; the S3 timeout must be a positive number of seconds")
    return value


def attempt_timeouts(connect: float, read: float, timeout: float) -> tuple[float, float]:
    """(connect, read) timeouts of one attempt, clipped so that one attempt fits in `timeout`: the connect
    timeout to a quarter of it, the read timeout to the rest."""
    connect = min(connect, timeout / 4)
    return connect, min(read, timeout - connect)


def retry_wait(exc: BaseException, where: str, endpoint: str, started: float, failures: int, backoff: float,
               backoff_max: float, timeout: float, attempt_s: float) -> float:
    """Seconds to back off before attempt `failures + 1` of a request that began at `started` (monotonic),
    or StorageError (naming `where`, the endpoint and the time spent) when that attempt, `attempt_s` long
    at worst, could not finish within `timeout`."""
    wait = min(backoff * 2 ** (failures - 1), backoff_max)
    spent = time.monotonic() - started
    if spent + wait + attempt_s > timeout:
        raise StorageError(
            f"{where}: no answer from {endpoint} within the S3 timeout: gave up after {spent:.1f} s and "
            f"{failures} attempt{'s' if failures > 1 else ''} (timeout {timeout:g} s; set it with --s3-timeout, "
            f"${S3_TIMEOUT_ENV} or the storage option timeout); last error: {type(exc).__name__}: {exc}"
        ) from exc
    return wait
