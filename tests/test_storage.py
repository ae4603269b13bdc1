"""The storage layer: local and S3 backends through the same tests, and S3 faults through a TCP proxy."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import pytest

from wdspq.errors import StorageError, WdspqError
from wdspq.storage import LocalStorage, S3Storage, Storage, StorageReader, open_storage

MiB = 1 << 20


def _data(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path) -> Storage:
    if request.param == "local":
        return open_storage(tmp_path / "root")
    return open_storage(request.getfixturevalue("s3_bucket"))


def _read_in_chunks(f, chunk: int) -> bytes:
    return b"".join(iter(lambda: f.read(chunk), b""))


# ----------------------------------------------------------------------------------------- both


def test_put_read_list_size_exists_delete(storage: Storage) -> None:
    assert storage.list() == []
    storage.put_bytes("manifest.json", b'{"a": 1}')
    storage.put_bytes("shards/s-000.tar", b"x" * 1000)
    storage.put_bytes("shards/s-001.tar", b"")
    storage.put_bytes("shards/s-000.tar", b"y" * 10)  # overwrite
    assert storage.list() == ["manifest.json", "shards/s-000.tar", "shards/s-001.tar"]
    assert storage.list("shards/") == ["shards/s-000.tar", "shards/s-001.tar"]
    assert storage.list("shards/s-001") == ["shards/s-001.tar"]
    assert storage.list("nothing") == []
    assert storage.read_bytes("shards/s-000.tar") == b"y" * 10
    assert storage.read_bytes("shards/s-001.tar") == b""
    assert storage.size("shards/s-000.tar") == 10
    assert storage.exists("manifest.json") and not storage.exists("missing.json")
    storage.delete("manifest.json")
    storage.delete("manifest.json")  # deleting a missing object is fine
    assert not storage.exists("manifest.json")
    assert storage.list() == ["shards/s-000.tar", "shards/s-001.tar"]


def test_open_read_full_and_ranged(storage: Storage) -> None:
    data = _data(300_000)
    storage.put_bytes("obj.bin", data)
    with storage.open_read("obj.bin", buffer_size=64 * 1024) as f:
        assert isinstance(f, StorageReader)
        assert _read_in_chunks(f, 7777) == data
        assert f.tell() == len(data)
        assert f.bytes_read == len(data) and f.reopens == 0
    for start, end in [(0, 1), (1, 2), (12345, 200_000), (299_999, None), (100_000, None), (0, 300_000),
                       (250_000, 10**9), (300_000, None), (5, 5)]:
        with storage.open_read("obj.bin", start, end) as f:
            assert f.tell() == start
            assert f.read() == data[start:end], (start, end)
    with storage.open_read("obj.bin", 1000, 2000) as f:
        assert f.read(10) == data[1000:1010]
        assert f.tell() == 1010
        assert _read_in_chunks(f, 333) == data[1010:2000]
    with pytest.raises(StorageError, match="past the end"):
        storage.open_read("obj.bin", 300_001)


def test_staging_commit_is_atomic_and_discard_leaves_nothing(storage: Storage) -> None:
    data = _data(100_000, seed=1)
    path = storage.staging_path("shards/s-000.tar")
    with open(path, "wb") as f:
        f.write(data[:50_000])
        assert not storage.exists("shards/s-000.tar")
        f.write(data[50_000:])
    assert not storage.exists("shards/s-000.tar")
    assert storage.list() == []  # staging files are never listed
    storage.commit(path, "shards/s-000.tar")
    assert not Path(path).exists()
    assert storage.list() == ["shards/s-000.tar"]
    assert storage.read_bytes("shards/s-000.tar") == data

    other = storage.staging_path("shards/s-001.tar")
    assert other != path
    other.write_bytes(b"partial")
    storage.discard(other)
    storage.discard(other)  # twice is fine
    assert not other.exists()
    assert storage.list() == ["shards/s-000.tar"]
    if isinstance(storage, LocalStorage):
        assert sorted(p.name for p in (storage.root / "shards").iterdir()) == ["s-000.tar"]


def test_errors_name_the_url(storage: Storage) -> None:
    url = storage.url("missing/obj.bin")
    for call in (lambda: storage.read_bytes("missing/obj.bin"), lambda: storage.size("missing/obj.bin"),
                 lambda: storage.open_read("missing/obj.bin", 10)):
        with pytest.raises(StorageError) as info:
            call()
        assert url in str(info.value) and "no such" in str(info.value)
        assert isinstance(info.value, WdspqError)
    with pytest.raises(StorageError, match="invalid object name"):
        storage.read_bytes("../escape")


def test_pickles_without_clients(storage: Storage) -> None:
    storage.put_bytes("a.txt", b"abc")
    clone = pickle.loads(pickle.dumps(storage))
    assert clone.read_bytes("a.txt") == b"abc"
    assert clone.url("a.txt") == storage.url("a.txt")


def test_open_storage_urls(tmp_path) -> None:
    assert isinstance(open_storage(str(tmp_path)), LocalStorage)
    local = open_storage(f"file://{tmp_path}/x", read_ahead=MiB, max_retries=3)
    assert isinstance(local, LocalStorage) and local.root == tmp_path / "x" and local.read_ahead == MiB
    s3 = open_storage("s3://bucket/some/prefix/", endpoint_url="http://127.0.0.1:1", read_timeout=2)
    assert isinstance(s3, S3Storage) and s3.bucket == "bucket" and s3.prefix == "some/prefix"
    assert s3.url("m.json") == "s3://bucket/some/prefix/m.json"
    assert open_storage("s3://bucket").url("m.json") == "s3://bucket/m.json"
    assert open_storage(s3) is s3
    with pytest.raises(StorageError, match="unsupported URL scheme"):
        open_storage("gs://bucket/x")
    with pytest.raises(TypeError):
        open_storage(str(tmp_path), bogus=1)


# ------------------------------------------------------------------------------------------- S3


def test_s3_missing_bucket_is_named(s3_bucket: str) -> None:
    st = open_storage("s3://wdspq-no-such-bucket-4711/p")
    for call in (lambda: st.read_bytes("m.json"), lambda: st.size("m.json"), lambda: st.exists("m.json"),
                 lambda: st.list(), lambda: st.put_bytes("m.json", b"1")):
        with pytest.raises(StorageError, match="bucket 'wdspq-no-such-bucket-4711' does not exist") as info:
            call()
        assert "s3://wdspq-no-such-bucket-4711/p" in str(info.value) and "(exists)" not in str(info.value)


def test_s3_missing_credentials_say_so(s3_bucket: str, monkeypatch, tmp_path) -> None:
    """No credentials at all -> one line naming them, not a hint about shard folders."""
    from wdspq.shardfmt import load_manifest

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(WdspqError) as info:
        load_manifest(s3_bucket)
    msg = str(info.value)
    assert "no AWS credentials found" in msg and "exported shard folder" not in msg, msg


def test_s3_multipart_commit(s3_bucket: str) -> None:
    bucket, _, prefix = s3_bucket[len("s3://"):].partition("/")
    st = S3Storage(bucket, prefix, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    data = _data(11 * MiB, seed=2)
    path = st.staging_path("big.tar")
    path.write_bytes(data)
    st.commit(path, "big.tar")
    assert not path.exists()
    etag = st._client().head_object(Bucket=bucket, Key=f"{prefix}/big.tar")["ETag"]
    assert etag.strip('"').endswith("-3"), etag  # a multipart upload of 3 parts
    assert st.size("big.tar") == len(data)
    assert st.read_bytes("big.tar") == data


def _via_proxy(s3_bucket: str, proxy, **options) -> S3Storage:
    bucket, _, prefix = s3_bucket[len("s3://"):].partition("/")
    options = {"backoff": 0.01, "read_timeout": 5.0, **options}
    return S3Storage(bucket, prefix, endpoint_url=proxy.endpoint_url, **options)


def test_s3_dropped_connections_resume_at_the_consumed_offset(s3_bucket: str, fault_proxy) -> None:
    data = _data(6 * MiB, seed=3)
    open_storage(s3_bucket).put_bytes("shard.tar", data)
    st = _via_proxy(s3_bucket, fault_proxy, read_ahead=256 * 1024)
    for n in (700_001, 1_300_007, 333_333):
        fault_proxy.drop_after(n)
    with st.open_read("shard.tar") as f:
        got = _read_in_chunks(f, 100_000)
        assert f.reopens == 3
    assert got == data
    gets = fault_proxy.gets("shard.tar")
    assert len(gets) == 4
    assert gets[0].range is None and gets[0].response_bytes == 700_001
    consumed = 0
    for prev, nxt in zip(gets, gets[1:]):
        consumed += prev.body_bytes
        assert 0 < consumed < len(data)
        assert nxt.range == f"bytes={consumed}-"
    assert consumed + gets[-1].body_bytes == len(data)


def test_s3_dropped_connection_in_a_bounded_range(s3_bucket: str, fault_proxy) -> None:
    data = _data(3 * MiB, seed=4)
    open_storage(s3_bucket).put_bytes("shard.tar", data)
    st = _via_proxy(s3_bucket, fault_proxy)
    fault_proxy.drop_after(500_000, times=2)
    start, end = 123_456, 2_900_000
    with st.open_read("shard.tar", start, end) as f:
        assert f.read() == data[start:end]
    gets = fault_proxy.gets("shard.tar")
    assert [g.range_start for g in gets] == [start, start + gets[0].body_bytes,
                                             start + gets[0].body_bytes + gets[1].body_bytes]
    assert all(g.range.endswith(f"-{end - 1}") for g in gets)


def test_s3_stall_past_read_timeout_reopens(s3_bucket: str, fault_proxy) -> None:
    data = _data(2 * MiB, seed=5)
    open_storage(s3_bucket).put_bytes("shard.tar", data)
    st = _via_proxy(s3_bucket, fault_proxy, read_timeout=1.0)
    # A stall far longer than any test run: the read can only finish by giving up on the stalled
    # connection after its 1 s read timeout and reopening (no clock is read here).
    fault_proxy.stall(600.0, after=400_000)
    with st.open_read("shard.tar") as f:
        got = _read_in_chunks(f, 65536)
        assert f.reopens == 1
    assert got == data
    gets = fault_proxy.gets("shard.tar")
    assert len(gets) == 2 and gets[1].range == f"bytes={gets[0].body_bytes}-"


def test_s3_object_replaced_during_a_read_fails_instead_of_mixing(s3_bucket: str, fault_proxy) -> None:
    writer = open_storage(s3_bucket)
    writer.put_bytes("shard.tar", _data(1 * MiB, seed=8))
    st = _via_proxy(s3_bucket, fault_proxy)
    fault_proxy.drop_after(300_000)
    with st.open_read("shard.tar", buffer_size=64 * 1024) as f:
        f.read(1000)  # the rest of the first 300 kB is on its way; the reopen comes later
        writer.put_bytes("shard.tar", _data(1 * MiB, seed=9))
        with pytest.raises(StorageError, match="changed while it was being read"):
            _read_in_chunks(f, 65536)
    assert "if-match" in fault_proxy.gets("shard.tar")[1].headers


def test_s3_exhausted_retries_name_object_and_offset(s3_bucket: str, fault_proxy) -> None:
    data = _data(2 * MiB, seed=6)
    open_storage(s3_bucket).put_bytes("shard.tar", data)
    st = _via_proxy(s3_bucket, fault_proxy, max_retries=3)
    fault_proxy.drop_after(300_000)  # the first response breaks mid-body ...
    fault_proxy.drop_after(0, times=None)  # ... and every reopen fails at once
    with st.open_read("shard.tar") as f:
        with pytest.raises(StorageError) as info:
            _read_in_chunks(f, 65536)
        assert f.reopens == 3
    offset = fault_proxy.gets("shard.tar")[0].body_bytes
    assert 0 < offset < 300_000
    msg = str(info.value)
    assert st.url("shard.tar") in msg and f"byte offset {offset}" in msg and "3 retries" in msg
    assert len(fault_proxy.gets("shard.tar")) == 4


def test_s3_resumed_read_makes_a_range_request_at_the_offset(s3_bucket: str, fault_proxy) -> None:
    data = _data(1 * MiB, seed=7)
    open_storage(s3_bucket).put_bytes("shard.tar", data)
    st = _via_proxy(s3_bucket, fault_proxy)
    offset = 654_321
    with st.open_read("shard.tar", offset) as f:
        assert f.tell() == offset
        assert f.read() == data[offset:]
        assert f.bytes_read == len(data) - offset  # nothing before the offset was fetched
    gets = fault_proxy.gets("shard.tar")
    assert [g.range for g in gets] == [f"bytes={offset}-"]
    assert gets[0].body_bytes == len(data) - offset


def test_s3_whole_object_read_sends_no_range(s3_bucket: str, fault_proxy) -> None:
    open_storage(s3_bucket).put_bytes("m.json", b"{}")
    assert _via_proxy(s3_bucket, fault_proxy).read_bytes("m.json") == b"{}"
    assert [g.range for g in fault_proxy.gets("m.json")] == [None]


def _read_in_child(storage: S3Storage, name: str, queue) -> None:
    queue.put((os.getpid(), storage.read_bytes(name), storage._pid))


def test_s3_client_is_per_process(s3_bucket: str) -> None:
    import multiprocessing

    st = open_storage(s3_bucket)
    st.put_bytes("a", b"1")
    assert st.read_bytes("a") == b"1"
    assert st._clients and "_clients" not in st.__getstate__()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(st, "a", queue))  # inherits the parent's clients
    child.start()
    pid, data, child_storage_pid = queue.get(timeout=30)
    child.join(timeout=30)
    assert child.exitcode == 0 and data == b"1"
    assert child_storage_pid == pid != os.getpid()  # the child made its own client
    assert st._pid == os.getpid()


def test_s3_trickling_connection_cannot_reopen_forever(s3_bucket: str, fault_proxy) -> None:
    """Every response breaks after a few KB: each reopen makes progress, so the per-stall retry count
    resets, but the reopens of the read in all are bounded."""
    data = _data(1 * MiB, seed=9)
    open_storage(s3_bucket).put_bytes("shard.tar", data)
    st = _via_proxy(s3_bucket, fault_proxy, max_retries=3, max_reopens=6)
    fault_proxy.drop_after(8_000, times=None)
    with pytest.raises(StorageError, match=r"shard\.tar: read failed at byte offset \d+: the connection broke 7 times "
                                           r"during this read \(max_reopens=6\)"):
        with st.open_read("shard.tar") as f:
            _read_in_chunks(f, 65536)
    gets = fault_proxy.gets("shard.tar")
    assert len(gets) == 7 and all(g.body_bytes > 0 for g in gets)  # progress every time, still bounded
    fault_proxy.clear_faults()
    assert open_storage(st).read_bytes("shard.tar") == data  # the same storage reads once the link is fine
