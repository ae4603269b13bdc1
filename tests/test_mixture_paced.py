"""A mixture source's paced block reads (`SourceReader.records(..., paced=True)`, what DataLoader workers use):
the same records in the same order as reading each block whole when it is reached, but no single sample
pulls a whole block's decode (the next block is decoded a few samples per sample of the current one)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from stream_child import SPEC, make_export

import wdspq
import wdspq.mixture


@pytest.fixture(scope="module", params=["auto", "per-sample"])
def stream(request, small_table, tokenizer_path, tmp_path_factory) -> Any:
    """A mixture of two exports, in the default layout (shared frames) and per-sample."""
    root = tmp_path_factory.getbasetemp()
    paths = [make_export(small_table, tokenizer_path, root, spec={**SPEC, "stride": s}, samples_per_shard=40,
                         layout=request.param) for s in (3, 5)]
    return wdspq.ShardStream([wdspq.Source(p) for p in paths], seed=0)


def _pulls(reader: Any, k0: int, k1: int, paced: bool) -> tuple[list[bytes], list[int]]:
    """Records of samples k0..k1-1 and, per record yielded, how many records were decoded to yield it."""
    run_records = reader.reader.run_records
    count = [0]

    def counted(shard: int, a: int, b: int) -> Any:
        for rec in run_records(shard, a, b):
            count[0] += 1
            yield rec

    reader.reader.run_records = counted
    try:
        out, pulls, seen = [], [], 0
        for rec in reader.records(k0, k1, paced):
            out.append(bytes(rec))
            pulls.append(count[0] - seen)
            seen = count[0]
        return out, pulls
    finally:
        del reader.reader.run_records


@pytest.mark.parametrize("j", [0, 1])
def test_paced_reads_give_the_same_records_in_the_same_order(stream, j) -> None:
    r = stream.readers[j]
    for k0, k1 in [(0, r.n), (7, 2 * r.n + 13), (r.n - 5, r.n + 50), (3, 4)]:
        whole, _ = _pulls(r, k0, k1, paced=False)
        paced, _ = _pulls(r, k0, k1, paced=True)
        assert len(paced) == k1 - k0
        assert paced == whole


def test_paced_reads_spread_each_blocks_decode(stream, monkeypatch) -> None:
    monkeypatch.setattr(wdspq.mixture, "PACE", 1)  # pace sample by sample: blocks here are only ~40 samples
    r = stream.readers[0]
    _, whole = _pulls(r, 0, 2 * r.n, paced=False)
    _, paced = _pulls(r, 0, 2 * r.n, paced=True)
    assert sum(paced) == sum(whole) == 2 * r.n
    block = max(whole)
    assert block >= 30  # unpaced: a shard's block (40 samples here) is decoded when its first sample is due
    # paced: after the first block, a yield decodes ceil(next / current) samples of the next block (a shard's
    # short last block makes that a few), and whatever is left of the block it reaches
    assert max(paced[block:]) <= 8 < block


def _sparse(r: Any, slots: int, mine: int, size: int, passes: int = 2) -> list[int]:
    """The K a slot reads of a source when batches of `size` of it are dealt to `slots` slots in turn."""
    return [k for k in range(passes * r.n) if (k // size) % slots == mine]


@pytest.mark.parametrize("mmap", ["1", "0"])
@pytest.mark.parametrize("paced", [False, True])
def test_a_slots_share_of_each_block_reads_the_same_records_as_one_by_one(stream, monkeypatch, mmap, paced) -> None:
    """`records_at` (a slot's samples of one source: every other batch's stretch, and stretches of one sample)
    gives exactly the records `records` gives for each K, mapped or through ranged runs, and takes them from one
    mapping per ordinal block on a local shard instead of one read per run of positions."""
    monkeypatch.setenv("WDSPQ_MMAP", mmap)
    r = stream.readers[0]
    for slots, mine, size in [(2, 1, 5), (3, 0, 1), (1, 0, 7)]:
        ks = _sparse(r, slots, mine, size)
        runs = [0]
        run_records = r.reader.run_records

        def counted(shard: int, a: int, b: int, runs: list[int] = runs, run_records: Any = run_records) -> Any:
            runs[0] += 1
            return run_records(shard, a, b)

        r.reader.run_records = counted
        try:
            chunks = [np.asarray(ks[i:i + 11], dtype=np.int64) for i in range(0, len(ks), 11)]
            got = [bytes(x) for x in r.records_at(chunks, paced)]
        finally:
            del r.reader.run_records
        want = [bytes(next(r.records(k, k + 1))) for k in ks]
        assert got == want, (slots, mine, size)
        if slots > 1 and mmap == "1" and r.manifest.encoding.layout == "per-sample":
            assert runs[0] == 0  # every block share taken from its mapping (per-sample samples are mapped)
        elif slots > 1:
            assert runs[0] > len(ks) // 10  # ranged runs: several per block share
