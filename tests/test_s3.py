"""S3 end to end: export to s3://, stream with StreamLoader, resume mid-shard, survive faults.

Runs against the moto server the fixtures start on 127.0.0.1, or unchanged against the endpoint in
$WDSPQ_TEST_S3_ENDPOINT (credentials from the AWS variables); only the checks that need the fault
proxy (request log, injected faults) are skipped when that endpoint is https.

The small table is exported once per module locally and once to S3 with the same seed; the local
stream is the reference every S3 stream is compared with, sample by sample and in order.
"""

from __future__ import annotations

import json
import pickle
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from faultproxy import FaultProxy

import wdspq
from wdspq.cursor import Topology, resume
from wdspq.epoch_order import block_size
from wdspq.errors import ShardError, StorageError, WdspqError
from wdspq.shardfmt import MANIFEST_NAME, RAW, Encoding
from wdspq.storage import S3Storage, open_storage
from wdspq.stream import ShardStream, StreamLoader

SPEC = {"acts_length_sec": 0.5, "obs_length_sec": 0.5, "video_frame_offsets": [-2, -1, 0], "stride": 5}
EXPORT_SEED = 3
PER_SHARD = 40  # ~240 windows of ~15 kB -> 6 shards of ~600 kB
STREAM_SEED = 1
BATCH = 8
WORKERS = 2
PER_SAMPLE_ZSTD = Encoding(layout="per-sample")  # the tuned zstd records, one member per sample

Batch = dict[str, torch.Tensor]


# ------------------------------------------------------------------------------------------ fixtures


def _export(table: str, out: str, tokenizer: str, encoding: Any = RAW) -> dict[str, Any]:
    """Raw records by default: the fault byte counts below are sized for them (~15 kB per sample)."""
    return wdspq.export_shards(table, out, wdspq.WindowSpec(**SPEC), tokenizer=tokenizer,
                               samples_per_shard=PER_SHARD, seed=EXPORT_SEED, progress=False, encoding=encoding)


@pytest.fixture(scope="module")
def local_export(small_table: str, tokenizer_path: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("s3-local") / "shards")
    manifest = _export(small_table, out, tokenizer_path)
    assert 150 <= manifest["num_windows"] <= 300 and len(manifest["shards"]) >= 5
    return out


@pytest.fixture(scope="module")
def s3_export(small_table: str, tokenizer_path: str, s3_module_bucket: str) -> str:
    """The same export, written to S3 through the default (environment-configured) client."""
    _export(small_table, s3_module_bucket, tokenizer_path)
    return s3_module_bucket


@pytest.fixture(scope="module")
def reference(local_export: str) -> list[Batch]:
    """The batches of one epoch of the local export (seed STREAM_SEED, BATCH, WORKERS)."""
    return list(StreamLoader(ShardStream(local_export, seed=STREAM_SEED), BATCH, WORKERS))


@pytest.fixture(scope="module")
def default_exports(small_table: str, tokenizer_path: str, s3_module_bucket: str,
                    tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, list[Batch]]:
    """Tuned zstd records, per-sample (the exact byte ranges of the samples left; shared frames, whose
    reads also hold packs: test_shared_frames), locally and on S3, and the local epoch's batches."""
    local = str(tmp_path_factory.mktemp("s3-local-zstd") / "shards")
    remote = s3_module_bucket.rstrip("/") + "/zstd"
    _export(small_table, local, tokenizer_path, PER_SAMPLE_ZSTD)
    _export(small_table, remote, tokenizer_path, PER_SAMPLE_ZSTD)
    return local, remote, list(StreamLoader(ShardStream(local, seed=STREAM_SEED), BATCH, WORKERS))


@pytest.fixture
def maybe_proxy(s3_endpoint: str) -> Iterator[FaultProxy | None]:
    """A FaultProxy in front of the endpoint, or None for https endpoints (the proxy speaks plain HTTP)."""
    if not s3_endpoint.startswith("http://"):
        yield None
        return
    with FaultProxy(s3_endpoint) as proxy:
        yield proxy


# ------------------------------------------------------------------------------------------- helpers


def _opts(endpoint: str, **kw: Any) -> dict[str, Any]:
    """Storage options for a stream: an explicit endpoint and quick retries."""
    return {"endpoint_url": endpoint, "backoff": 0.01, "max_retries": 3, "read_timeout": 10.0, **kw}


def _loader(source: str, workers: int = WORKERS, **options: Any) -> StreamLoader:
    return StreamLoader(ShardStream(source, seed=STREAM_SEED, storage_options=options or None), BATCH, workers)


def _assert_same(got: list[Batch], want: list[Batch]) -> None:
    """Same batches in the same order: keys (in order), dtypes, shapes and values."""
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert list(g) == list(w), f"batch {i}: keys differ"
        for k in w:
            assert g[k].dtype == w[k].dtype and g[k].shape == w[k].shape, f"batch {i}, {k}"
            assert torch.equal(g[k], w[k]), f"batch {i}, {k}: values differ"


def _window_indices(batches: list[Batch]) -> list[int]:
    return torch.cat([b["window_index"] for b in batches]).tolist() if batches else []


def _assert_exactly_once(batches: list[Batch], n: int) -> None:
    wi = _window_indices(batches)
    assert len(wi) == n and sorted(wi) == list(range(n))


def _shard_gets(proxy: FaultProxy) -> list:
    return [g for g in proxy.gets() if re.search(r"/shard-\d+\.tar(\?|$)", g.target)]


def _object(g: Any) -> str:
    return g.target.split("?", 1)[0].rsplit("/", 1)[-1]


def _planned_reads(stream: ShardStream, state: dict[str, Any], topology: Topology) -> Counter:
    """The ranged GETs a stream resumed from `state` must make: per block of the epoch's in-shard order,
    one per run of consecutive sample positions not yet delivered, each from the manifest byte offset of
    its first sample to the end of its last (a block left whole is one GET per chunk; no delivered sample is read)."""
    manifest = stream.manifest
    r = resume(state, manifest.shard_sizes, topology, rank=0, blocks=stream._blocks)
    reads: Counter = Counter()
    for slot in range(topology.n_slots):
        assert r.plan.slot_pad_count(slot) == 0  # one rank: no pads
        shards, pos, _ = r.plan.slot_arrays(slot, int(r.skip[slot] or 0))
        for s in np.unique(shards).tolist():
            entry = manifest.shards[s]
            perm, g = stream.in_shard_order(s, r.state.epoch), block_size(entry["samples"], entry["bytes"])
            offsets = manifest.offsets(s).tolist()
            q = pos[shards == s]
            for blk in np.unique(q // g).tolist():
                phys = np.sort(perm[q[q // g == blk]])
                for run in np.split(phys, np.flatnonzero(np.diff(phys) != 1) + 1):
                    reads[(entry["name"], f"bytes={offsets[run[0]]}-{offsets[run[-1] + 1] - 1}")] += 1
    return reads


# ------------------------------------------------------------------------------------------- tests


def test_s3_export_is_byte_identical_and_streams_like_local(local_export: str, s3_export: str,
                                                            reference: list[Batch]) -> None:
    local, remote = open_storage(local_export), open_storage(s3_export)
    manifest = json.loads(local.read_bytes(MANIFEST_NAME))
    names = [s["name"] for s in manifest["shards"]] + [s["index"]["name"] for s in manifest["shards"]]
    assert json.loads(remote.read_bytes(MANIFEST_NAME)) == manifest
    # complete objects only: no staging files, no export journal left behind
    assert remote.list() == sorted([MANIFEST_NAME, *names])
    for name in names:
        assert remote.read_bytes(name) == local.read_bytes(name), name
    _assert_exactly_once(reference, manifest["num_windows"])
    got = list(_loader(s3_export))  # endpoint and credentials from the AWS variables
    _assert_same(got, reference)


def _options_only_stream(s3_export: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> ShardStream:
    """A stream whose storage options alone lead to the server: the AWS variables point nowhere."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    return ShardStream(s3_export, seed=STREAM_SEED, storage_options=_opts(s3_endpoint, read_timeout=7.0))


def test_s3_storage_options_survive_pickling_into_workers(s3_export: str, s3_endpoint: str, reference: list[Batch],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    stream = _options_only_stream(s3_export, s3_endpoint, monkeypatch)
    clone = pickle.loads(pickle.dumps(stream))  # what a spawn/forkserver DataLoader worker receives
    st = clone.manifest.storage
    assert isinstance(st, S3Storage) and not st._clients
    assert (st.endpoint_url, st.read_timeout, st.max_retries, st.backoff) == (s3_endpoint, 7.0, 3, 0.01)
    _assert_same(list(StreamLoader(clone, BATCH, WORKERS)), reference)


@pytest.mark.slow
def test_s3_storage_options_reach_spawned_workers(s3_export: str, s3_endpoint: str, reference: list[Batch],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    stream = _options_only_stream(s3_export, s3_endpoint, monkeypatch)
    loader = StreamLoader(stream, BATCH, WORKERS, multiprocessing_context="spawn")  # ~5 s per worker start
    _assert_same(list(loader), reference)


@pytest.mark.parametrize("stop_after, encoding", [(3, "raw"), (17, "raw"), (27, "raw"), (5, "zstd")])
def test_s3_resume_mid_shard_ranges_at_manifest_offsets(s3_export: str, s3_endpoint: str, reference: list[Batch],
                                                        maybe_proxy: FaultProxy | None, stop_after: int,
                                                        encoding: str, request: pytest.FixtureRequest) -> None:
    """Resume mid-shard (up to ~90 % of the epoch) with Range GETs at index offsets that cover exactly the
    samples left, one per block run (raw and zstd records): no skipped sample is fetched (R5)."""
    if encoding == "zstd":
        local, s3_export, reference = request.getfixturevalue("default_exports")
        assert json.loads(open_storage(local).read_bytes(MANIFEST_NAME))["encoding"]["compression"] == "zstd"
    first = _loader(s3_export, **_opts(s3_endpoint))
    head: list[Batch] = []
    it = iter(first)
    for batch in it:
        head.append(batch)
        if len(head) == stop_after:
            break
    state = json.loads(json.dumps(first.state_dict()))
    it.close()  # stops the workers of the interrupted run

    endpoint = maybe_proxy.endpoint_url if maybe_proxy is not None else s3_endpoint
    loader = _loader(s3_export, **_opts(endpoint))
    loader.load_state_dict(state)
    manifest = loader.stream.manifest
    planned = _planned_reads(loader.stream, state, loader.topology)
    if maybe_proxy is not None:
        maybe_proxy.clear_requests()  # forget the manifest GET
    tail = list(loader)
    _assert_same(head + tail, reference)  # the resumed run equals the uninterrupted one
    assert len(head) == stop_after and tail

    # the resumed runs start mid-shard, at a sample offset recorded in the manifest
    starts = {(n, int(r[len("bytes="):].split("-")[0])) for n, r in planned}
    by_name = {s["name"]: manifest.offsets(i).tolist() for i, s in enumerate(manifest.shards)}
    assert any(0 < off < by_name[n][-1] for n, off in starts), starts
    if maybe_proxy is None:
        return
    gets = _shard_gets(maybe_proxy)
    assert len(gets) == len(maybe_proxy.gets())  # nothing but the planned shard reads
    assert Counter((_object(g), g.range) for g in gets) == planned
    for g in gets:
        assert g.range_start in by_name[_object(g)]


def test_s3_epoch_fetches_each_sample_once(s3_export: str, maybe_proxy: FaultProxy | None,
                                           reference: list[Batch]) -> None:
    """A fresh epoch in the block order fetches every sample's bytes exactly once, in ranged GETs of at most
    one block each (bytes per epoch = the samples' bytes, under 1.1x the shard bytes)."""
    if maybe_proxy is None:
        pytest.skip("needs the request log of the fault proxy (plain http endpoint)")
    loader = _loader(s3_export, **_opts(maybe_proxy.endpoint_url))
    manifest = loader.stream.manifest
    maybe_proxy.clear_requests()
    _assert_same(list(loader), reference)
    fetched: Counter = Counter()
    for g in _shard_gets(maybe_proxy):
        a, b = (int(x) for x in g.range[len("bytes="):].split("-"))
        fetched[_object(g)] += b + 1 - a
    sample_bytes = {s["name"]: int(manifest.offsets(i)[-1]) for i, s in enumerate(manifest.shards)}
    assert dict(fetched) == sample_bytes
    assert sum(fetched.values()) <= 1.1 * sum(int(s["bytes"]) for s in manifest.shards)


def test_s3_epoch_survives_dropped_and_stalled_connections(s3_export: str, fault_proxy: FaultProxy,
                                                          reference: list[Batch]) -> None:
    loader = _loader(s3_export, **_opts(fault_proxy.endpoint_url, read_timeout=1.0))
    fault_proxy.clear_requests()
    for n in (40_000, 150_000, 90_000):
        fault_proxy.drop_after(n, target=".tar")
    fault_proxy.stall(4.0, after=60_000, target=".tar")  # past the 1 s read timeout
    fault_proxy.drop_after(250_000, target=".tar")
    got = list(loader)
    _assert_same(got, reference)
    _assert_exactly_once(got, loader.stream.manifest.num_windows)
    assert fault_proxy.pending_faults == 0

    gets = _shard_gets(fault_proxy)
    faulted = [g for g in gets if g.fault is not None]
    assert [g.fault.kind for g in faulted] == ["drop", "drop", "drop", "stall", "drop"]
    assert len(gets) == len(loader.stream.manifest.shards) + len(faulted)  # one reopen per fault
    for g in faulted:
        assert 0 < g.body_bytes
        later = gets[gets.index(g) + 1:]
        reopen = f"bytes={g.range_start + g.body_bytes}-{g.range.split('-', 1)[1]}"
        assert any(_object(x) == _object(g) and x.range == reopen for x in later), (g, reopen)


@pytest.mark.parametrize("workers", [0, WORKERS])
def test_s3_exhausted_retries_raise_a_clear_error(s3_export: str, fault_proxy: FaultProxy, workers: int) -> None:
    opts = _opts(fault_proxy.endpoint_url, read_timeout=1.0, max_retries=2)
    stream = ShardStream(s3_export, seed=STREAM_SEED, storage_options=opts)
    # workers=0 reads one shard at a time, so the failure is the first shard's, mid-shard
    loader = StreamLoader(stream, BATCH, workers, interleave=1 if workers == 0 else None)
    fault_proxy.clear_requests()
    fault_proxy.drop_after(100_000, target=".tar")  # the first shard read breaks mid-body ...
    fault_proxy.drop_after(0, times=None, target=".tar")  # ... and so does every shard request after it
    with pytest.raises(WdspqError) as info:
        for _ in loader:
            pass
    assert isinstance(info.value, (StorageError, ShardError))
    msg = str(info.value)
    found = re.search(rf"{re.escape(s3_export)}/(shard-\d{{6}}\.tar)\b.*byte offset (\d+) after 2 retries", msg)
    assert found, msg
    name, offset = found.group(1), int(found.group(2))
    # the offset is where the reader stood when it gave up: its last two attempts (the retries) asked for it
    gets = [g for g in _shard_gets(fault_proxy) if _object(g) == name]
    assert [(g.range_start, g.body_bytes) for g in gets[-2:]] == [(offset, 0)] * 2
    m = loader.stream.manifest
    offsets = next(m.offsets(i).tolist() for i, s in enumerate(m.shards) if s["name"] == name)
    assert offsets[0] <= offset < offsets[-1]
    if workers == 0:
        first = _shard_gets(fault_proxy)[0]
        consumed = first.range_start + first.body_bytes
        assert name == _object(first) and first.range_start == 0 and 0 < first.body_bytes < 100_000
        # the offset reached, or the manifest offset of the sample being read when the connection broke
        assert 0 < offset <= consumed and (offset == consumed or offset in offsets), (offset, consumed)
        assert "\n" not in msg and "StorageReader" not in msg, msg  # one line, no webdataset decorations
