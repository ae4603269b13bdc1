"""How S3 failures are classified: which error codes mean missing, denied or retry, and which
exceptions (network faults, 5xx, throttling) a retry may cure."""

from __future__ import annotations

from http.client import HTTPException

MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
DENIED_CODES = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                "AllAccessDisabled", "ExpiredToken", "InvalidToken"}
RETRY_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling",
               "ThrottlingException", "RequestTimeTooSkewed"}


def client_error_code(exc: BaseException) -> tuple[str, int]:
    """(error code, HTTP status) of a botocore ClientError ('' and 0 where absent)."""
    resp = getattr(exc, "response", None) or {}
    code = str(resp.get("Error", {}).get("Code", ""))
    status = int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def is_retryable(exc: BaseException) -> bool:
    """Network faults and server-side 5xx/throttling are retried; 4xx and configuration errors are not."""
    from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from urllib3.exceptions import HTTPError as Urllib3HTTPError

    if isinstance(exc, ClientError):
        code, status = client_error_code(exc)
        return status >= 500 or code in RETRY_CODES
    return isinstance(exc, (HTTPClientError, BotoConnectionError, IncompleteReadError, Urllib3HTTPError,
                            HTTPException, OSError, ShortRead))


class ShortRead(Exception):
    """The server closed a response body before its announced end."""


def root_cause(exc: BaseException) -> BaseException:
    """boto3's managed transfer wraps the ClientError that says why; unwrap it for the message."""
    from botocore.exceptions import ClientError

    seen = exc
    while seen is not None:
        if isinstance(seen, ClientError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc

