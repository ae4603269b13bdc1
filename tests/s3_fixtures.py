"""pytest fixtures for S3 tests: a local S3 server, a fresh bucket per test, a fault-injecting proxy.

The server is moto (`tools/s3_server.py`), started once per session on 127.0.0.1. Set
WDSPQ_TEST_S3_ENDPOINT (plus the usual AWS credential variables) to run the same tests against MinIO
or AWS instead. Imported by conftest.py.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultproxy import FaultProxy

__all__ = ["s3_endpoint", "s3_bucket", "s3_module_bucket", "fault_proxy"]

_TOOLS = Path(__file__).resolve().parent.parent / "tools"


def s3_server_module():
    """tools/s3_server.py as a module (tools/ is not a package and not on sys.path)."""
    name = "wdspq_tools_s3_server"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _TOOLS / "s3_server.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def is_external() -> bool:
    """Whether the tests run against an external endpoint ($WDSPQ_TEST_S3_ENDPOINT)."""
    return bool(os.environ.get(s3_server_module().EXTERNAL_ENDPOINT_VAR))



@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The endpoint URL of the test S3 server (a local moto, or $WDSPQ_TEST_S3_ENDPOINT)."""
    with s3_server_module().local_s3_server() as url:
        yield url


def _set_aws_env(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    if not is_external():  # moto accepts any credentials; never pick up a developer's real ones
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for var in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION"):
            monkeypatch.delenv(var, raising=False)
    elif not (os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")):
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def _admin_client(endpoint: str):
    import boto3
    from botocore.config import Config

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.client("s3", endpoint_url=endpoint, region_name=region,
                        config=Config(s3={"addressing_style": "path"}))


@contextlib.contextmanager
def fresh_bucket(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Create a uniquely named bucket, yield 's3://<bucket>/data', then delete it and its objects.

    Sets the AWS variables (through `monkeypatch`) so that default-configured clients reach `endpoint`.
    """
    _set_aws_env(monkeypatch, endpoint)
    client = _admin_client(endpoint)
    bucket = f"wdspq-test-{uuid.uuid4().hex[:16]}"
    region = client.meta.region_name
    if region and region != "us-east-1":
        client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    else:
        client.create_bucket(Bucket=bucket)
    try:
        yield f"s3://{bucket}/data"
    finally:
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
            uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
            for up in uploads:
                client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
            client.delete_bucket(Bucket=bucket)
        except Exception:  # cleanup is best effort; a local moto forgets everything anyway
            pass


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh, uniquely named bucket: yields 's3://<bucket>/data' with the AWS variables pointing at it.

    The bucket and everything in it are deleted afterwards (matters for external endpoints).
    """
    with fresh_bucket(s3_endpoint, monkeypatch) as url:
        yield url


@pytest.fixture(scope="module")
def s3_module_bucket(s3_endpoint: str) -> Iterator[str]:
    """Like `s3_bucket`, shared by the tests of one module (for data exported once per module).

    The AWS variables stay set for the whole module and are restored after it.
    """
    with pytest.MonkeyPatch.context() as mp, fresh_bucket(s3_endpoint, mp) as url:
        yield url


@pytest.fixture
def fault_proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    """A FaultProxy in front of the test S3 server (skipped for https endpoints: it parses plain HTTP)."""
    if not s3_endpoint.startswith("http://"):
        pytest.skip(f"the fault proxy needs a plain-HTTP endpoint, not {s3_endpoint}")
    with FaultProxy(s3_endpoint) as proxy:
        yield proxy
