"""Shared-frames layout: every window equals the map-style dataset (read from any position, streamed, and
through the README's plain-webdataset decoder); verify --table; byte-identical for 1 and 2 workers; exact
resume; S3 epochs fetch each byte about once and a resume reads no delivered sample."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import webdataset as wds

import wdspq
from wdspq.cli import main as cli_main
from wdspq.errors import WdspqError
from wdspq.shardfmt import Encoding, load_manifest, read_run
from wdspq.shardfmt.shared import PACK_MEMBER, pack_first_window, pack_key
from wdspq.shardfmt.shared_read import locate_window
from wdspq.stream import ShardStream, StreamLoader

SPEC = wdspq.WindowSpec(acts_length_sec=0.5, obs_length_sec=0.5, video_frame_offsets=[-2, -1, 0], stride=2)
ENC = Encoding(layout="shared-frames", segment=6)
SPP = 40


def _export(table: str, out: Any, tokenizer: str, **kw: Any) -> dict[str, Any]:
    return wdspq.export_shards(table, out, SPEC, tokenizer=tokenizer, samples_per_shard=SPP, seed=3,
                               encoding=ENC, progress=False, **kw)


@pytest.fixture(scope="module")
def ds(small_table: str, tokenizer_path: str) -> wdspq.ParquetWindowDataset:
    return wdspq.ParquetWindowDataset(small_table, SPEC, tokenizer=tokenizer_path)


@pytest.fixture(scope="module")
def export(small_table: str, tokenizer_path: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shared") / "shards"
    _export(small_table, out, tokenizer_path)
    return out


def _equal(got: dict[str, Any], want: dict[str, Any], what: str) -> None:
    assert set(got) == set(want), what
    for k in want:
        g, w = np.asarray(got[k]), np.asarray(want[k])
        assert g.dtype == w.dtype and g.shape == w.shape, (what, k)
        assert np.array_equal(g, w, equal_nan=g.dtype.kind == "f"), (what, k)


def test_every_window_equals_the_map_style_dataset_from_any_start(export: Path, ds: Any) -> None:
    m = load_manifest(str(export))
    assert m.data["encoding"]["layout"] == "shared-frames" and m.data["encoding"]["segment"] == 6
    seen: set[int] = set()
    for s in range(len(m.shards)):
        idx = m.index(s)
        assert idx.shape == (m.shards[s]["samples"], 4)
        n = len(idx)
        for i, got in enumerate(read_run(m, s, 0, n)):
            wi = int(got["window_index"])
            _equal(got, ds.sample_numpy(wi), f"shard {s} sample {i}")
            seen.add(wi)
        # runs starting inside a segment (their pack read on its own) and single samples
        for a in sorted({1, n // 2, n - 1}):
            whole = [int(x["window_index"]) for x in read_run(m, s, 0, n)][a:]
            assert [int(x["window_index"]) for x in read_run(m, s, a, n)] == whole
            _equal(next(iter(read_run(m, s, a, a + 1))), ds.sample_numpy(whole[0]), f"shard {s} sample {a}")
    assert seen == set(range(len(ds)))


def test_shards_share_frames_and_are_smaller(export: Path, small_table: str, tokenizer_path: str,
                                             tmp_path: Path) -> None:
    per = wdspq.export_shards(small_table, tmp_path / "per", SPEC, tokenizer=tokenizer_path, samples_per_shard=SPP,
                              seed=3, progress=False, encoding=Encoding(layout="per-sample"))
    shared = load_manifest(str(export)).data
    assert sum(s["bytes"] for s in shared["shards"]) < sum(s["bytes"] for s in per["shards"])  # flat synthetic frames:
    # the records dominate here; tools/bench_shared.py measures real frames
    names = [n for s in shared["shards"] for n in __import__("tarfile").open(export / s["name"]).getnames()]
    packs = [n for n in names if n.endswith(PACK_MEMBER)]
    assert len(packs) == sum(-(-int(c) // 6) for c in wdspq.ParquetWindowDataset(
        small_table, SPEC, tokenizer=tokenizer_path).index.counts if c)
    assert len(names) == len(packs) + shared["num_windows"]  # one member per sample, one per segment


def test_stream_epoch_is_exactly_once_and_equal(export: Path, ds: Any) -> None:
    got = list(ShardStream(str(export), shuffle=True, seed=5))
    assert sorted(int(s["window_index"]) for s in got) == list(range(len(ds)))
    for s in got[:: max(1, len(got) // 25)]:
        _equal({k: np.asarray(v) for k, v in s.items() if k in ds.sample_schema()}, ds.sample_numpy(int(s["window_index"])),
               "stream")


def test_block_order_builds_each_record_as_it_is_handed_out(export: Path, ds: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The block order reads a block's bytes at once but builds each record when its sample is handed out,
    not every record of the block before its first (which made one batch carry the block's decode and
    DataLoader workers wait for each other)."""
    from wdspq.shardfmt.shared import SharedFramesCodec

    built = [0]
    original = SharedFramesCodec.record_from

    def counting(self: Any, payload: Any, pack: Any, where: str) -> Any:
        built[0] += 1
        return original(self, payload, pack, where)

    monkeypatch.setattr(SharedFramesCodec, "record_from", counting)
    ahead, got = [], []
    for k, x in enumerate(ShardStream(str(export), shuffle=True, seed=5)):
        ahead.append(built[0] - k)  # records built before this sample, beyond those handed out
        got.append(x)
    assert max(ahead) == 1 and built[0] == len(got) == len(ds)
    reader = ShardStream(str(export), seed=5)._reader  # whole blocks only: a piecemeal taker would reread packs
    assert reader.mapped(0, np.arange(4)) is None and reader.mapped(0, np.arange(4), whole_blocks=True) is not None
    for x in got[:: max(1, len(got) // 25)]:
        _equal({k: np.asarray(v) for k, v in x.items()}, ds.sample_numpy(int(x["window_index"])), "stream")


def test_block_order_damaged_frame_pack_is_named_or_its_samples_skipped(export: Path, ds: Any, tmp_path: Path) -> None:
    """A frame pack that does not decode, read in the block order: the default policy names it; with
    on_error="skip" exactly its segment's samples become placeholders and every other window comes once."""
    bad = tmp_path / "bad"
    __import__("shutil").copytree(export, bad)
    idx = load_manifest(str(bad)).index(0)
    po = int(idx[0, 2])
    segment = {int(x["window_index"]) for x in read_run(load_manifest(str(export)), 0, 0, int((idx[:, 2] == po).sum()))}
    shard = bad / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[po + 512 + 40] ^= 0xFF  # inside the first frame pack's zstd payload
    shard.write_bytes(bytes(data))
    with pytest.raises(WdspqError, match="shard-000000.tar.*frame pack"):
        list(ShardStream(str(bad), shuffle=True, seed=5))
    with pytest.warns(UserWarning, match="placeholders"):
        got = list(ShardStream(str(bad), shuffle=True, seed=5, on_error="skip"))
    windows = [int(x["window_index"]) for x in got]
    assert windows.count(-1) == len(segment) and sorted(w for w in windows if w >= 0) == sorted(set(range(len(ds))) - segment)
    for x in got:
        if int(x["window_index"]) >= 0:
            _equal({k: np.asarray(v) for k, v in x.items()}, ds.sample_numpy(int(x["window_index"])), "skip")


def test_readme_decoder_reads_shared_frames_with_plain_webdataset(export: Path, ds: Any) -> None:
    from test_shard_format import readme_decoder

    m = json.loads((export / "manifest.json").read_text())
    urls = [str(export / s["name"]) for s in m["shards"]]
    out = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8").map(readme_decoder()(str(export))))
    assert len(out) == len(ds)
    for s in out:
        wi = int(s["window_index"])
        _equal({k: v for k, v in s.items() if not k.startswith("__")}, ds.sample_numpy(wi), f"window {wi}")


def test_verify_table_passes_and_names_a_damaged_frame_pack(export: Path, small_table: str, tokenizer_path: str,
                                                            tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["verify", str(export), "--table", small_table, "--tokenizer", tokenizer_path]) == 0
    assert "0 differ" in capsys.readouterr().out
    bad = tmp_path / "bad"
    __import__("shutil").copytree(export, bad)
    shard = bad / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    po = int(load_manifest(str(bad)).index(0)[0, 2])
    data[po + 512 + 40] ^= 0xFF  # inside the first frame pack's zstd payload
    shard.write_bytes(bytes(data))
    assert cli_main(["verify", str(bad)]) != 0
    assert "frame pack" in capsys.readouterr().out


def test_byte_identical_for_1_and_2_workers(export: Path, small_table: str, tokenizer_path: str, tmp_path: Path) -> None:
    _export(small_table, tmp_path / "w2", tokenizer_path, workers=2)
    names = sorted(p.name for p in export.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "w2").iterdir())
    for n in names:
        assert (export / n).read_bytes() == (tmp_path / "w2" / n).read_bytes(), n


def test_dry_run_estimate_is_close(export: Path, small_table: str, tokenizer_path: str, tmp_path: Path) -> None:
    est = _export(small_table, tmp_path / "dry", tokenizer_path, dry_run=True)
    m = load_manifest(str(export)).data
    total = sum(s["bytes"] + s["index"]["bytes"] for s in m["shards"])
    total += m["encoding"].get("dictionary_file", {}).get("bytes", 0)
    assert abs(est["total_bytes"] / total - 1) < 0.25  # a small table; bench_shared.py measures the real ones


def test_every_window_is_located_through_its_frame_pack(export: Path) -> None:
    """`locate_window` (what `wdspq show` uses) finds each window where a plain read of the shards has it."""
    m = load_manifest(str(export))
    where = {int(s["window_index"]): (i, p) for i in range(len(m.shards))
             for p, s in enumerate(read_run(m, i, 0, m.shards[i]["samples"]))}
    assert len(where) == m.num_windows
    for w in range(m.num_windows):
        assert locate_window(m, w) == where[w]
    assert pack_first_window(f"{pack_key(1234)}.{PACK_MEMBER}") == 1234
    assert pack_first_window("0000001234.sample.npy.zst") is None
    assert pack_first_window(f"{pack_key(5)}.sample.npy.zst") is None


def test_layout_needs_raw_frames_and_zstd() -> None:
    with pytest.raises(WdspqError, match="shared-frames"):
        Encoding(layout="shared-frames", frames="png")
    with pytest.raises(WdspqError, match="layout"):
        Encoding(layout="packed")
    assert "layout" not in Encoding(layout="per-sample").to_dict()  # per-sample exports keep their manifests
    # and digests


def _batches(loader: StreamLoader) -> list[dict[str, torch.Tensor]]:
    return list(loader)


def test_resume_at_90_percent_is_exact(export: Path) -> None:
    ref = _batches(StreamLoader(ShardStream(str(export), seed=1), 8, 2))
    first = StreamLoader(ShardStream(str(export), seed=1), 8, 2)
    head, it = [], iter(first)
    stop = int(0.9 * len(ref))
    for b in it:
        head.append(b)
        if len(head) == stop:
            break
    state = json.loads(json.dumps(first.state_dict()))
    it.close()
    again = StreamLoader(ShardStream(str(export), seed=1), 8, 2)
    again.load_state_dict(state)
    got = head + _batches(again)
    assert len(got) == len(ref)
    for g, w in zip(got, ref):
        assert torch.equal(g["window_index"], w["window_index"])
        for k in w:
            assert torch.equal(g[k], w[k]), k


def test_a_block_order_state_names_its_blocks_and_an_older_one_is_refused_clearly(export: Path) -> None:
    """A block-order state names the in-shard blocks it was read in (their digest): a state saved before the
    blocks of shared-frames shards were cut at segments (it lacks the entry) or under other blocks is a clear
    StateError mid-epoch, never a silently different order; a finished epoch's state still moves on."""
    from wdspq.errors import StateError

    first = StreamLoader(ShardStream(str(export), seed=1), 8, 0)
    it = iter(first)
    next(it)
    state = json.loads(json.dumps(first.state_dict()))
    it.close()
    assert state["shard_order"] == "block" and len(state["blocks"]) == 16
    StreamLoader(ShardStream(str(export), seed=1), 8, 0).load_state_dict(state)
    older = {k: v for k, v in state.items() if k != "blocks"}
    with pytest.raises(StateError, match="earlier wdspq.*start the epoch afresh"):
        StreamLoader(ShardStream(str(export), seed=1), 8, 0).load_state_dict(older)
    with pytest.raises(StateError, match="other in-shard blocks"):
        StreamLoader(ShardStream(str(export), seed=1), 8, 0).load_state_dict({**state, "blocks": "0" * 16})
    done = StreamLoader(ShardStream(str(export), seed=1), 8, 0)
    list(done)
    finished = {k: v for k, v in done.state_dict().items() if k != "blocks"}
    assert finished["complete"]
    again = StreamLoader(ShardStream(str(export), seed=1), 8, 0)
    again.load_state_dict(finished)
    assert len(list(again) or list(again)) == len(list(done))  # the rest of the finished epoch (none), then the next


def test_an_older_start_of_epoch_state_of_shared_frames_still_loads(export: Path) -> None:
    """A state saved before any sample of its epoch was delivered (before iterating, or after set_epoch past a
    finished epoch) by a wdspq that did not name the blocks continues nothing: it loads and gives the epoch as
    today's blocks read it, like a finished epoch's state; only a mid-epoch one is refused."""
    fresh = StreamLoader(ShardStream(str(export), seed=1), 8, 2)
    want = [b["window_index"].tolist() for b in fresh]
    for epoch in (0, 1):
        saver = StreamLoader(ShardStream(str(export), seed=1), 8, 2)
        saver.set_epoch(epoch)
        older = {k: v for k, v in json.loads(json.dumps(saver.state_dict())).items() if k != "blocks"}
        assert not older["complete"] and not any(older["delivered"])
        again = StreamLoader(ShardStream(str(export), seed=1), 8, 2)
        again.load_state_dict(older)
        got = [b["window_index"].tolist() for b in again]
        if epoch == 0:
            assert got == want
        else:
            ref = StreamLoader(ShardStream(str(export), seed=1), 8, 2)
            ref.set_epoch(1)
            assert got == [b["window_index"].tolist() for b in ref]


# ------------------------------------------------------------------------------------------------ S3

def _gets(proxy: Any) -> list:
    return [g for g in proxy.gets() if re.search(r"/shard-\d+\.tar(\?|$)", g.target)]


def _range(g: Any) -> tuple[str, int, int]:
    a, b = (int(x) for x in g.range[len("bytes="):].split("-"))
    return g.target.split("?", 1)[0].rsplit("/", 1)[-1], a, b + 1


def test_s3_epoch_bytes_and_resume_reads_no_delivered_sample(export: Path, small_table: str, tokenizer_path: str,
                                                             s3_bucket: str, s3_endpoint: str) -> None:
    from faultproxy import FaultProxy

    if not s3_endpoint.startswith("http://"):
        pytest.skip("needs the fault proxy's request log (plain http endpoint)")
    _export(small_table, s3_bucket, tokenizer_path)
    local = load_manifest(str(export))
    with FaultProxy(s3_endpoint) as proxy:
        opts = {"endpoint_url": proxy.endpoint_url, "backoff": 0.01, "max_retries": 3}

        def loader() -> StreamLoader:
            return StreamLoader(ShardStream(s3_bucket, seed=1, storage_options=opts), 8, 2)

        proxy.clear_requests()
        ref = _batches(loader())
        fetched = sum(b - a for _, a, b in map(_range, _gets(proxy)))
        export_bytes = sum(s["bytes"] for s in local.shards)
        assert fetched <= 1.2 * export_bytes, (fetched, export_bytes)

        first = loader()
        head, it = [], iter(first)
        for b in it:
            head.append(b)
            if len(head) == int(0.9 * len(ref)):
                break
        state = json.loads(json.dumps(first.state_dict()))
        it.close()
        delivered = {int(w) for b in head for w in b["window_index"].tolist()}
        again = loader()
        again.load_state_dict(state)
        proxy.clear_requests()
        tail = _batches(again)
        assert [b["window_index"].tolist() for b in head + tail] == [b["window_index"].tolist() for b in ref]
        # sample members inside each GET: none of them a delivered window
        by_name = {s["name"]: i for i, s in enumerate(local.shards)}
        windows = {i: [int(x["window_index"]) for x in read_run(local, i, 0, local.shards[i]["samples"])]
                   for i in range(len(local.shards))}
        read: Counter = Counter()
        for name, a, b in map(_range, _gets(proxy)):
            i = by_name[name]
            idx = local.index(i)
            inside = np.flatnonzero((idx[:, 0] >= a) & (idx[:, 0] + idx[:, 1] <= b))
            read.update(windows[i][p] for p in inside.tolist())
        assert not delivered & set(read), sorted(delivered & set(read))[:5]
        assert set(read) == set(range(local.num_windows)) - delivered


def test_overwrite_under_a_running_stream_stops_before_mixing_exports(small_table: str, tokenizer_path: str,
                                                                     tmp_path: Path) -> None:
    """An export rewritten under a running stream: the stream stops with ExportChangedError before it opens a
    shard of the new export (shared-frames reads check the manifest after each open, as per-sample reads do)."""
    from wdspq.errors import ExportChangedError

    out = tmp_path / "o"
    _export(small_table, out, tokenizer_path)
    ref = [w for b in StreamLoader(ShardStream(str(out), seed=1), 8, 0) for w in b["window_index"].tolist()]
    it = iter(StreamLoader(ShardStream(str(out), seed=1), 8, 0))
    got = [w for _ in range(3) for w in next(it)["window_index"].tolist()]
    wdspq.export_shards(small_table, out, SPEC, tokenizer=tokenizer_path, samples_per_shard=SPP, seed=4,
                        encoding=ENC, progress=False, overwrite=True)
    with pytest.raises(ExportChangedError, match="changed while it was being read"):
        for b in it:
            got += b["window_index"].tolist()
    assert got == ref[: len(got)] and len(got) < len(ref)


@pytest.mark.slow
def test_ray_engine_is_byte_identical(export: Path, small_table: str, tokenizer_path: str, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        _export(small_table, tmp_path / "ray", tokenizer_path, engine="ray")
    finally:
        ray.shutdown()
    names = sorted(p.name for p in export.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "ray").iterdir())
    for n in names:
        assert (export / n).read_bytes() == (tmp_path / "ray" / n).read_bytes(), n


# ----------------------------------------------------------------------------------------------
# batch diversity and the block order of shared-frames shards (pure plans, no shard read)


def _batchmates() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("batchmates", Path(__file__).resolve().parents[1] / "tools" / "batchmates.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


# windows per episode of the bench's peer-style table (20 episodes x 10 s, stride 4)
PEER_COUNTS = [278, 328, 167, 329, 327, 227, 233, 158, 302, 264, 250, 254, 235, 266, 261, 275, 306, 223, 330, 179]


def _episodes_per_batch(counts: list[int], segment: int, per_shard: int, workers: int, seed: int) -> float:
    """Mean distinct episodes in a full batch of 32 (interleave 4) over epochs 0 and 1 of the stream's plan:
    shards as the exporter groups windows (segments for shared frames, else a permutation of windows)."""
    from wdspq.cursor import Topology
    from wdspq.export.plan import segment_assignment
    from wdspq.shardfmt.names import shard_assignment

    bm = _batchmates()
    c = np.asarray(counts)
    starts = np.r_[0, np.cumsum(c)[:-1]]
    shards = (segment_assignment(starts, c, segment, per_shard, seed, True) if segment
              else shard_assignment(int(c.sum()), per_shard, seed, True))
    windows = np.concatenate(shards)
    topo = Topology(num_workers=workers, batch_size=32, interleave=4)
    got = []
    for epoch in (0, 1):
        ids, batch = bm.epoch_batch_ids([len(s) for s in shards], 2_000, topo, seed, epoch, "block", segment)
        episode = np.searchsorted(starts, windows[ids], side="right")
        full = np.flatnonzero(np.bincount(batch) == 32)
        keep = np.isin(batch, full)
        got.append(len(np.unique(batch[keep] * len(counts) + episode[keep] - 1)) / len(full))
    return float(np.mean(got))


@pytest.mark.parametrize("counts, workers", [(PEER_COUNTS, 0), ([100] * 16, 2)], ids=["peer-0-workers", "sim-2-workers"])
def test_batches_mix_as_many_episodes_as_per_sample_shards(counts: list[int], workers: int) -> None:
    """200 windows a shard, segments of 32 (a shard holds ~7 segments; a batch takes 8 samples of each of
    its 4 shards): at least as many episodes per batch as per-sample shards (seeds 0-3). Before the
    stratified segment order and chunks of whole segments: 13.8 against 16.0 episodes (peer-style)."""
    shared = np.mean([_episodes_per_batch(counts, 32, 200, workers, s) for s in range(4)])
    per_sample = np.mean([_episodes_per_batch(counts, 0, 200, workers, s) for s in range(4)])
    assert shared >= per_sample, (shared, per_sample)


def test_segment_order_spreads_each_episode_and_shards_start_with_full_segments() -> None:
    """20 episodes of 8 full segments and a short one: shards of 7-8 segments hold as many different episodes,
    full segments first (the block order's chunks, whole segments, then hold one segment each)."""
    from wdspq.export.plan import segment_assignment

    counts = np.full(20, 8 * 32 + 5)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    shards = segment_assignment(starts, counts, 32, 200, 7, True)
    assert sorted(np.concatenate(shards).tolist()) == list(range(int(counts.sum())))
    for s in shards:
        episode = np.searchsorted(starts, s, side="right") - 1
        seg = episode * 100 + (s - starts[episode]) // 32  # segment id of each window
        firsts = np.flatnonzero(np.r_[True, np.diff(seg) != 0])
        assert len(set(seg.tolist())) == len(firsts) <= 8, "a segment split within its shard"
        assert len(set(episode[firsts].tolist())) == len(firsts), "an episode twice in a shard"
        full = np.diff(np.r_[firsts, len(s)]) == 32
        assert not full[np.argmin(full):].any() or full.all(), "a short segment before a full one"
    canonical = segment_assignment(starts, counts, 32, 200, 7, False)
    assert np.array_equal(np.concatenate(canonical), np.arange(int(counts.sum())))


@pytest.mark.parametrize("n, shard_bytes, segment", [(200, 340_000, 32), (1000, 5_500_000, 32), (1000, 1_700_000, 24),
                                                     (20_000, 110_000_000, 32), (5, 10_000, 32)])
def test_block_chunks_are_whole_segments(n: int, shard_bytes: int, segment: int) -> None:
    from wdspq.epoch_order import CHUNKS, block_layout, block_size

    c, k = block_layout(block_size(n, shard_bytes, segment))
    assert c % segment == 0 and k == CHUNKS
    assert block_size(n, shard_bytes, 0) == block_size(n, shard_bytes)  # per-sample shards: unchanged


@pytest.mark.parametrize("sample_bytes, segment", [(1_700, 32), (5_500, 64), (30_000, 16)])
def test_batch_mates_change_from_epoch_to_epoch_with_segments(sample_bytes: int, segment: int) -> None:
    """The block order's batch-mate targets hold for shared-frames shards: <= 2 % at 24 x 200, 2 workers,
    batch 16; <= 1 % at 1,000 x 1,000, 8 workers, batch 64."""
    from wdspq.cursor import Topology

    bm = _batchmates()
    small = Topology(num_workers=2, batch_size=16, interleave=4)
    assert bm.repeat_rate([200] * 24, sample_bytes, small, "block", 0, segment) <= 0.02
    big = Topology(num_workers=8, batch_size=64, interleave=4)
    assert bm.repeat_rate([1000] * 1000, sample_bytes, big, "block", 0, segment) <= 0.01
