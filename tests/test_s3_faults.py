"""S3 endpoints that hang, and the number of requests verification makes.

An endpoint that accepts connections and never answers must fail every kind of request within the
configured S3 timeout (library option, $WDSPQ_S3_TIMEOUT, `--s3-timeout`), with an error naming the
endpoint, the object and the time spent. The tests assert on the configured per-attempt timeouts and
on the error text; the only clock check is a generous ceiling (the old code took minutes).
`verify --table` reads the samples it compares as runs of a shard, not one request per sample.
"""

from __future__ import annotations

import os
import pickle
import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest

import wdspq
from wdspq.cli import main
from wdspq.errors import StorageError
from wdspq.storage import S3Storage, open_storage
from wdspq.storage.s3_time import DEFAULT_S3_TIMEOUT
from wdspq.verify import verify_shards

SPEC = {"acts_length_sec": 0.5, "obs_length_sec": 0.5, "video_frame_offsets": [-2, -1, 0], "stride": 5}
CEILING_S = 30.0  # far above the 2 s bound used below; the old code took 1-10 minutes


class BlackHole:
    """A TCP server on 127.0.0.1 that accepts every connection and never sends a byte."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.conns: list[socket.socket] = []
        self.accepted = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.accepted += 1

    def close(self) -> None:
        self._closed = True
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def hole(monkeypatch: pytest.MonkeyPatch) -> Iterator[BlackHole]:
    """A never-answering endpoint, with the AWS variables pointing at it (fake credentials)."""
    h = BlackHole()
    monkeypatch.setenv("AWS_ENDPOINT_URL", h.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "WDSPQ_S3_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    yield h
    h.close()


def test_timeout_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound and the per-attempt timeouts it implies: option > $WDSPQ_S3_TIMEOUT > 60 s default."""
    monkeypatch.delenv("WDSPQ_S3_TIMEOUT", raising=False)
    opts = {"endpoint_url": "http://127.0.0.1:1", "access_key": "a", "secret_key": "b"}
    default = S3Storage("b", **opts)
    assert default.timeout == DEFAULT_S3_TIMEOUT == 60.0
    assert default.attempt_timeouts == (10.0, 20.0)  # connect, read: one attempt fits in the bound
    st = S3Storage("b", timeout=2, **opts)
    assert st.attempt_timeouts == (0.5, 1.5)
    for kind in ("read", "main"):
        cfg = st._client(kind).meta.config
        assert (cfg.connect_timeout, cfg.read_timeout) == (0.5, 1.5)
    assert pickle.loads(pickle.dumps(st)).timeout == 2.0
    monkeypatch.setenv("WDSPQ_S3_TIMEOUT", "7.5")
    assert S3Storage("b", **opts).timeout == 7.5
    assert open_storage("s3://b/p", **opts).timeout == 7.5
    assert open_storage("s3://b/p", timeout=3, **opts).timeout == 3.0  # the option wins
    monkeypatch.setenv("WDSPQ_S3_TIMEOUT", "soon")
    with pytest.raises(StorageError, match=r"\$WDSPQ_S3_TIMEOUT is 'soon'"):
        S3Storage("b", **opts)
    with pytest.raises(StorageError, match="positive"):
        S3Storage("b", timeout=0, **opts)


def _assert_timeout_error(err: str, hole: BlackHole, what: str) -> None:
    assert hole.url in err and what in err, err
    assert "gave up after" in err and "timeout 2 s" in err and "--s3-timeout" in err, err


@pytest.mark.parametrize("op", ["size", "exists", "read", "list", "put"])
def test_never_answering_endpoint_fails_within_the_timeout(hole: BlackHole, op: str) -> None:
    st = S3Storage("bucket", "pre", endpoint_url=hole.url, timeout=2, backoff=0.01)
    calls = {
        "size": lambda: st.size("x.tar"),
        "exists": lambda: st.exists("x.tar"),
        "read": lambda: st.open_read("x.tar", 0, 100).read(),
        "list": lambda: st.list(),
        "put": lambda: st.put_bytes("x.json", b"{}"),
    }
    t0 = time.monotonic()
    with pytest.raises(StorageError) as e:
        calls[op]()
    assert time.monotonic() - t0 < CEILING_S
    _assert_timeout_error(str(e.value), hole, "s3://bucket/pre" + ("" if op == "list" else "/x."))
    assert hole.accepted >= 1


@pytest.mark.parametrize("command", ["verify", "info", "export"])
def test_cli_s3_timeout_flag(hole: BlackHole, small_table: str, command: str, capsys) -> None:
    args = {"verify": ["verify", "s3://bucket/shards"], "info": ["info", "s3://bucket/shards"],
            "export": ["export", small_table, "s3://bucket/shards", "--no-progress"]}[command]
    t0 = time.monotonic()
    rc = main([*args, "--s3-timeout", "2"])
    assert time.monotonic() - t0 < CEILING_S
    out = capsys.readouterr()
    assert rc == (1 if command == "verify" else 2), out  # verify reports an unusable manifest as a FAIL
    text = out.out if command == "verify" else out.err
    _assert_timeout_error(text, hole, "s3://bucket/shards")
    assert len(out.err.strip().splitlines()) == (command != "verify"), out.err
    assert "WDSPQ_S3_TIMEOUT" not in os.environ  # the flag does not leak out of the command


# ----------------------------------------------------------------------------------- request counts


@pytest.fixture(scope="module", params=["per-sample", "shared-frames"])
def s3_export(small_table: str, tokenizer_path: str, s3_module_bucket: str, request) -> str:
    # Shared frames: a compared window inside a segment is read from the segment's first sample, so its pack
    # comes in the same request (wdspq.verify._runs); without that a run costs a pack read besides.
    url = f"{s3_module_bucket}/{request.param}"
    wdspq.export_shards(small_table, url, SPEC, tokenizer=tokenizer_path, samples_per_shard=40, seed=3,
                        progress=False, encoding=wdspq.shardfmt.Encoding(layout=request.param))
    return url


def _tar_gets(proxy) -> list:
    return [g for g in proxy.gets() if re.search(r"/shard-\d+\.tar(\?|$)", g.target)]


@pytest.mark.parametrize("sample", [None, 30])
def test_verify_with_table_reads_runs_not_samples(s3_export: str, small_table: str, tokenizer_path: str,
                                                  fault_proxy, sample) -> None:
    """Before: one GET per compared sample (1,916 requests for 1,321 samples); now at most one run per
    shard and block of windows, plus the integrity pass's one read per shard."""
    opts = {"endpoint_url": fault_proxy.endpoint_url}
    plain = verify_shards(s3_export, storage_options=opts)
    assert plain.ok
    integrity, integrity_all = len(_tar_gets(fault_proxy)), len(fault_proxy.requests)
    fault_proxy.clear_requests()
    report = verify_shards(s3_export, table=small_table, sample=sample, tokenizer=tokenizer_path, storage_options=opts)
    assert report.ok and report.parity_checked == (sample or plain.samples)
    gets = _tar_gets(fault_proxy)
    assert len(gets) <= 2 * report.shards, [g.range for g in gets]
    assert len(gets) - integrity < report.parity_checked / 4
    # The overwrite check (docs/shards.md, "An export rewritten under a reader") HEADs the manifest once per
    # shard run opened; everything else must not grow with the samples: indexes are not read again per sample.
    stamps = [r for r in fault_proxy.requests if r.method == "HEAD" and r.target.split("?")[0].endswith("/manifest.json")]
    assert len(stamps) <= len(gets) + 1
    assert len(fault_proxy.requests) - len(stamps) <= integrity_all + report.shards
