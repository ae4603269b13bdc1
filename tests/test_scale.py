"""Bounded memory at scale: a stream worker's plan is generated lazily, and the map-style dataset
reads neither whole columns at start nor more than `cache_bytes` of table data."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pyarrow.parquet as pq
import pytest

import wdspq
from wdspq.cursor import Plan, Topology, epoch_shard_order
from wdspq.epoch_order import block_size


@pytest.fixture(scope="module")
def stream(small_table, tokenizer_path, tmp_path_factory) -> wdspq.ShardStream:
    out = tmp_path_factory.mktemp("scale") / "shards"
    wdspq.export_shards(small_table, out, wdspq.WindowSpec(acts_length_sec=0.5, obs_length_sec=0.5),
                        tokenizer=tokenizer_path, samples_per_shard=64, progress=False)
    return wdspq.ShardStream(str(out))


class _NoShards:
    """Stands in for the shard reader: yields a placeholder per position and reads nothing."""

    def run_records(self, shard: int, start: int, end: int):
        for _ in range(start, end):
            yield b"r"

    run = run_records

    def end_iteration(self) -> None:
        pass


def _worker_peak(stream: wdspq.ShardStream, windows: int, even: str = "pad") -> tuple[int, int]:
    """(entries, peak traced bytes) of worker 0's whole slot for a plan of `windows` windows (1,000 per shard)."""
    sizes = [1000] * (windows // 1000)
    topo = Topology(world_size=1, num_workers=2, batch_size=32, interleave=4, even=even)
    plan = Plan(sizes, [0] * len(sizes), epoch_shard_order(len(sizes), 0, 0, True), topo)
    stream._reader = _NoShards()
    stream._blocks = [block_size(1000, 1000 * 20_000)] * len(sizes)  # the stand-in plan's shards: ~20 kB samples
    tracemalloc.start()
    try:
        n = sum(1 for _ in stream._slot_items(plan, 0, 0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return n, peak


def test_stream_worker_plan_is_generated_lazily(stream):
    """At 250k and 1M windows a worker's memory is the same: O(its pieces + one chunk of the plan), not
    O(its windows) (materialising 500k entries would take > 16 MB in arrays and Python lists)."""
    reader, blocks = stream._reader, stream._blocks
    try:
        n_small, small = _worker_peak(stream, 250_000)
        n_big, big = _worker_peak(stream, 1_000_000)
        n_drop, drop = _worker_peak(stream, 1_000_000, even="drop")
    finally:
        stream._reader, stream._blocks = reader, blocks
    assert (n_small, n_big) == (125_000, 500_000) and n_drop <= 500_000
    assert big <= 1.1 * small + (1 << 20), (small, big)
    assert max(big, drop) < 16 << 20, (big, drop)


def test_map_dataset_start_and_row_group_cache_are_bounded(tmp_path, tokenizer_path):
    """The dataset reads the action timestamps one row group at a time at start (only their counts are kept),
    and the row groups it caches count against `cache_bytes` (test_table_dataset: a 1-byte cache holds nothing)."""
    from wdspq.build import build_synthetic

    table = tmp_path / "t.parquet"
    build_synthetic(tmp_path / "one.parquet", episodes=12, seconds=1.0, image_size=8, video_size=16, seed=1, progress=False)
    pq.write_table(pq.read_table(tmp_path / "one.parquet"), table, row_group_size=4)  # the schema keeps the metadata
    assert pq.ParquetFile(table).metadata.num_row_groups == 3
    spec = wdspq.WindowSpec(acts_length_sec=0.2, obs_length_sec=0.2)
    full = wdspq.ParquetWindowDataset(table, spec, tokenizer=tokenizer_path)
    n_ts = sum(len(x) for x in pq.read_table(table, columns=["action_ts"]).column(0).to_pylist())
    held = [k for k, v in vars(full).items() if isinstance(v, np.ndarray) and v.size >= n_ts]
    assert not held, held  # nothing of the size of a whole timestamp column is kept
    for i in (0, len(full) // 2, len(full) - 1):
        full.sample_numpy(i)
    big = full._proc()["cache"]
    assert 0 < big.bytes <= full.cache_bytes and any(k[0] == "row_group" for k in big.items)
