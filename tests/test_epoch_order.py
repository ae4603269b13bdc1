"""Epoch order (wdspq.epoch_order): the block shuffle inside shards, pieces that are ranges of a shard,
R1-R4 on plans with such pieces, work for every worker of a one-shard export, format-1 states, and the
batch-mate repeat rate of the pure plan (tools/batchmates.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stream_child import indices, make_export, real, take
from test_cursor import _check_elastic_chain, _check_exact_resume, all_samples, fresh_state

import wdspq
from wdspq.cursor import Plan, Topology, epoch_shard_order, new_epoch_state, resume
from wdspq.epoch_order import CHUNKS, block_layout, block_size, in_shard_order, read_in_order, split_ranges
from wdspq.errors import StateError, WdspqError
from wdspq.shardfmt import load_manifest

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROOT = Path(__file__).resolve().parents[1]

# few, long shards and many slots: the plans cut shards into pieces
sizes_st = st.lists(st.integers(0, 60), min_size=1, max_size=4)
topo_st = st.builds(
    Topology,
    world_size=st.integers(1, 3),
    num_workers=st.integers(0, 4),
    batch_size=st.integers(1, 5),
    interleave=st.integers(1, 4),
    even=st.sampled_from(["pad", "drop", "none"]),
)


# ----------------------------------------------------------------------------------------------
# the order inside a shard


def _runs(positions) -> int:
    """Runs of consecutive values in `positions` (the ranged reads they need)."""
    p = np.sort(np.asarray(positions))
    return int(len(p) > 0) + int(np.count_nonzero(np.diff(p) != 1))


@SETTINGS
@given(st.integers(0, 300), st.integers(1, 300), st.integers(0, 9), st.integers(0, 9), st.integers(0, 5), st.data())
def test_in_shard_order_is_a_block_shuffle(n, block, seed, epoch, shard, data):
    """Ordinal blocks of k <= CHUNKS chunks of c consecutive samples (the shard's last n % c samples in the
    last block), read row by row across the chunks; any stretch of a block is at most two runs per chunk."""
    perm = in_shard_order(seed, epoch, shard, n, block, "block")
    assert sorted(perm.tolist()) == list(range(n))
    c, k = block_layout(block)
    assert k <= CHUNKS and block <= c * k < block + c and block_layout(c * k) == (c, k)
    g = c * k
    for j in range(0, n, g):
        part = perm[j : j + g]
        if len(part) == g:  # a full block: column t % k is one whole chunk, rotated
            for col in range(k):
                chunk = part[col::k]
                lo = int(chunk.min())
                assert lo % c == 0 and sorted(chunk.tolist()) == list(range(lo, lo + c))
                assert _runs(chunk) <= 1 or (_runs(chunk) == 2 and chunk[0] > chunk[-1])
        else:
            assert j == n - len(part)  # the short block is the last
        chunks = {int(p) // c for p in part if p < n // c * c}
        assert sum(min(c, n - k * c) for k in chunks) + (n % c if j + g >= n else 0) == len(part)
        t0 = data.draw(st.integers(0, len(part) - 1))
        t1 = data.draw(st.integers(t0 + 1, len(part)))
        assert _runs(part[t0:t1]) <= 2 * (CHUNKS + 1)
    assert np.array_equal(perm, in_shard_order(seed, epoch, shard, n, block, "block"))  # pure
    assert np.array_equal(in_shard_order(seed, epoch, shard, n, block, "sequential"), np.arange(n))


def test_every_epoch_reads_a_shard_in_a_new_order():
    """A new order every epoch, and new block-mates: a block's chunks are drawn at random each epoch."""
    orders = [in_shard_order(0, e, 3, 500, 32, "block") for e in range(5)]
    assert len({tuple(o.tolist()) for o in orders}) == 5
    members = [{frozenset(o[j : j + 32].tolist()) for j in range(0, 500, 32)} for o in orders]
    assert all(not (members[0] & m) for m in members[1:])  # no block of epoch 0 is a block again
    assert not np.array_equal(in_shard_order(0, 0, 3, 500, 32, "block"), in_shard_order(0, 0, 4, 500, 32, "block"))
    assert block_size(1000, 17_800_000) == 512 and block_size(1000, 102_944_000) == 84
    assert block_size(200, 3_560_000) == 208 and block_size(7, None) == 7 and block_size(10, 10**9) == 1
    assert block_size(1000, 3 * 10**9) == 3  # 3 MB samples: blocks of 3 one-sample chunks (~9 MB)
    with pytest.raises(WdspqError, match="shuffle=True"):
        wdspq.cursor.new_epoch_state("m", "s", 0, False, 0, 3, Topology(), "block")


@SETTINGS
@given(st.integers(1, 200), st.integers(1, 80), st.integers(0, 5), st.data())
def test_read_in_order_reads_each_needed_sample_once_and_nothing_else(n, block, seed, data):
    """A stretch of ordinals is read as runs of consecutive positions inside each block, never outside the
    stretch (R5): a whole block in at most one read per chunk, a part of one in at most two."""
    perm = in_shard_order(seed, 0, 0, n, block, "block")
    q0 = data.draw(st.integers(0, n - 1))
    q1 = data.draw(st.integers(q0, n))
    reads = []

    def run(a, b):
        reads.append((a, b))
        yield from range(a, b)

    got = list(read_in_order(run, perm, block, q0, q1))
    assert got == perm[q0:q1].tolist()
    covered = [p for a, b in reads for p in range(a, b)]
    assert sorted(covered) == sorted(got)  # every needed sample read once, no other
    g = int(np.prod(block_layout(block)))
    blocks = [(int(perm[j : j + g].min()), set(perm[j : j + g].tolist())) for j in range(0, n, g)]
    if len(reads) > 1:  # (a stretch that is one run of consecutive positions is read in one go)
        assert all(any(set(range(a, b)) <= members for _, members in blocks) for a, b in reads)  # inside a block
    touched = len(range(q0 // g, (q1 - 1) // g + 1)) if q1 > q0 else 0
    assert len(reads) <= touched * 2 * (CHUNKS + 1)
    if q0 % g == 0 and q1 - q0 >= g:
        assert sum(1 for a, _ in reads if a in blocks[q0 // g][1]) <= CHUNKS  # a whole block: one read per chunk


# ----------------------------------------------------------------------------------------------
# pieces: ranges of a shard


@SETTINGS
@given(sizes_st, topo_st, st.lists(st.integers(1, 40), min_size=4, max_size=4) | st.none())
def test_split_pieces_give_every_slot_work(sizes, topo, blocks):
    plan = Plan(sizes, [0] * len(sizes), epoch_shard_order(len(sizes), 0, 0, True), topo, split=True,
                blocks=blocks)
    assert len(plan.pieces) <= len(sizes) + 2 * topo.n_slots
    assert sorted((p.shard, q) for p in plan.pieces for q in range(p.start, p.end)) == all_samples(sizes)
    if sum(sizes) >= topo.n_slots:
        assert all(plan.slot_pieces(s) for s in range(topo.n_slots))
    assert split_ranges([(0, 0, 10)], 1) == [(0, 0, 10)]
    assert split_ranges([(0, 0, 9), (1, 0, 1)], 2) == [(0, 0, 4), (0, 4, 9), (1, 0, 1)]
    # on block boundaries (multiples of 16 here) when the range spans as many blocks as pieces, else inside
    assert split_ranges([(0, 0, 100)], 3, [16]) == [(0, 0, 32), (0, 32, 48), (0, 48, 80), (0, 80, 100)]
    assert split_ranges([(0, 5, 100)], 2, [16]) == [(0, 5, 32), (0, 32, 64), (0, 64, 100)]
    assert split_ranges([(0, 0, 40)], 4, [16]) == [(0, 0, 10), (0, 10, 20), (0, 20, 30), (0, 30, 40)]


@SETTINGS
@given(st.lists(st.integers(0, 400), min_size=1, max_size=4), topo_st, st.lists(st.integers(1, 100), min_size=4,
                                                                              max_size=4))
def test_pieces_cut_on_block_boundaries_stay_short_enough_for_every_slot(sizes, topo, blocks):
    """Moving cuts to block boundaries never makes a piece longer than total / slots, so every slot still
    gets a piece; where every piece has a block's room to spare, every cut is a block boundary."""
    plan = Plan(sizes, [0] * len(sizes), epoch_shard_order(len(sizes), 0, 0, True), topo, split=True,
                blocks=blocks)
    f = sum(sizes) // max(1, topo.n_slots)
    assert len(plan.pieces) <= len(sizes) + 2 * topo.n_slots
    assert sorted((p.shard, q) for p in plan.pieces for q in range(p.start, p.end)) == all_samples(sizes)
    if sum(sizes) >= topo.n_slots:
        assert all(len(p) <= f for p in plan.pieces if len(p) < sizes[p.shard])
        assert all(plan.slot_pieces(s) for s in range(topo.n_slots))
    for s, n in enumerate(sizes):  # with room to spare in every piece, the cuts are block boundaries
        g, cuts = int(np.prod(block_layout(blocks[s]))), [p.start for p in plan.pieces if p.shard == s and p.start]
        if cuts and (len(cuts) + 1) * (f - g) >= n:
            assert all(x % g == 0 for x in cuts), (cuts, g, f)


def _reads_per_epoch(sizes: list[int], sample_bytes: int, topo: Topology, aware: bool = True
                     ) -> tuple[int, int, int, int]:
    """(ranged reads, blocks, chunks, pieces) of one epoch of the pure plan, read with the stream's `read_in_order`."""
    blocks = [block_size(n, n * sample_bytes) for n in sizes]
    state = new_epoch_state("m", "s", 0, True, 0, len(sizes), topo, "block")
    reads = pieces = 0
    for rank in range(topo.world_size):
        plan = resume(state, sizes, topo, rank, blocks if aware else None).plan
        for w in range(topo.workers):
            for p in plan.slot_pieces(topo.slot(rank, w)):
                calls: list[int] = []
                perm = in_shard_order(0, 0, p.shard, sizes[p.shard], blocks[p.shard], "block")
                run = lambda a, b, calls=calls: calls.append(a) or iter(range(a, b))  # noqa: E731
                for _ in read_in_order(run, perm, blocks[p.shard], p.start, p.end):
                    pass
                reads, pieces = reads + len(calls), pieces + 1
    chunks = sum(-(-n // block_layout(g)[0]) for n, g in zip(sizes, blocks))
    return reads, sum(-(-n // g) for n, g in zip(sizes, blocks)), chunks, pieces


@pytest.mark.parametrize("sizes, sample_bytes, world_size, workers", [
    ([1000], 17_800, 1, 8), ([1000] * 4, 17_800, 2, 8), ([1000] * 10, 7_004, 4, 8), ([960], 2_000, 1, 2),
    ([5000] * 3, 102_944, 2, 4), ([20_000], 102_944, 3, 5), ([37, 1000, 3], 300_000, 2, 3),
])
def test_ranged_reads_per_epoch_grow_with_blocks_and_pieces_not_samples(sizes, sample_bytes, world_size, workers):
    """A block is read in one go per chunk (<= CHUNKS reads), a piece boundary inside a block costs at most
    two reads per chunk more: reads <= CHUNKS x (blocks + 2 x pieces) whatever the sample count. Pieces cut
    on block boundaries where the shards span enough blocks: each chunk then read once, by one piece."""
    topo = Topology(world_size=world_size, num_workers=workers, batch_size=32, interleave=4)
    reads, blocks, chunks, pieces = _reads_per_epoch(sizes, sample_bytes, topo)
    assert reads <= CHUNKS * (blocks + 2 * pieces), (reads, blocks, pieces)
    if all(-(-n // block_size(n, n * sample_bytes)) >= 2 * topo.n_slots for n in sizes):
        assert reads <= chunks
        assert _reads_per_epoch(sizes, sample_bytes, topo, aware=False)[0] > chunks  # cuts that ignore blocks


@SETTINGS
@given(sizes_st, topo_st, st.integers(0, 3), st.lists(st.floats(0, 1), min_size=3, max_size=3))
def test_exact_resume_with_split_pieces(sizes, topo, seed, fracs):
    """R3 at any save point of a plan whose pieces are parts of shards (shard_order="block")."""
    state = fresh_state(sizes, topo, seed)
    assert state.shard_order == "block"
    plan = Plan.for_state(state, sizes)
    stops = [round(fracs[r] * plan.rank_batches(r)) for r in range(topo.world_size)]
    _check_exact_resume(sizes, topo, seed, stops)


@SETTINGS
@given(
    sizes_st,
    st.lists(st.tuples(topo_st, st.lists(st.floats(0, 1), min_size=1, max_size=3)), min_size=1, max_size=3),
    topo_st,
    st.integers(0, 3),
)
def test_elastic_chain_with_split_pieces(sizes, stops, last, seed):
    """R1/R4: exactly once over a chain of topologies, every `even` mode; the state stays O(pieces)."""
    got, state = _check_elastic_chain(sizes, seed, [*stops, (last, None)])
    if all(t.even != "drop" for t, _ in stops) and last.even != "drop":
        assert sorted(got) == all_samples(sizes)
    assert state.complete
    assert len(state.consumed) <= len(sizes) + 2 * max(t.n_slots for t, _ in [*stops, (last, None)])


# ----------------------------------------------------------------------------------------------
# streams


@pytest.fixture(scope="module")
def one_shard(small_table, tokenizer_path, tmp_path_factory) -> str:
    return make_export(small_table, tokenizer_path, tmp_path_factory.getbasetemp(), samples_per_shard=10_000)


@pytest.fixture(scope="module")
def one_shard_per_sample(small_table, tokenizer_path, tmp_path_factory) -> str:
    """The one-shard export with one member per sample (the tests of per-sample runs and their bytes)."""
    return make_export(small_table, tokenizer_path, tmp_path_factory.getbasetemp(), samples_per_shard=10_000,
                       layout="per-sample")


@pytest.mark.parametrize("world_size, persistent", [(1, True), (2, False)])
def test_one_shard_export_gives_every_worker_samples(one_shard, world_size, persistent):
    m = load_manifest(one_shard)
    assert len(m.shards) == 1
    ids = []
    for rank in range(world_size):
        stream = wdspq.ShardStream(one_shard, seed=1, rank=rank, world_size=world_size)
        loader = wdspq.StreamLoader(stream, batch_size=8, num_workers=2, persistent_workers=persistent)
        ids += real(indices(take(loader)))
        delivered = loader.state_dict()["delivered"][rank * 2 : rank * 2 + 2]
        assert min(delivered) >= 8, delivered  # both workers of the rank read samples
    assert sorted(ids) == list(range(m.num_windows))


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_one_shard_elastic_chain_is_exactly_once(one_shard):
    """Pieces that are parts of one shard, stopped mid-piece and resumed under other worker counts twice:
    the second resume carries consumed ranges to its workers (through the loader's control block)."""
    n = load_manifest(one_shard).num_windows

    def loader(workers):
        return wdspq.StreamLoader(wdspq.ShardStream(one_shard, seed=4), batch_size=8, num_workers=workers)

    first = loader(2)
    ids = real(indices(take(first, 7)))
    state = json.loads(json.dumps(first.state_dict()))
    second = loader(3)
    second.load_state_dict(state)
    ids += real(indices(take(second, 9)))
    state = json.loads(json.dumps(second.state_dict()))
    assert state["consumed"], "the fold of split pieces leaves ranges past each shard's base"
    third = loader(2)
    third.load_state_dict(state)
    ids += real(indices(take(third, 5)))
    state = json.loads(json.dumps(third.state_dict()))
    assert state["consumed"]
    fourth = loader(2)  # same topology: the workers rebuild the plan from the consumed ranges
    fourth.load_state_dict(state)
    ids += real(indices(take(fourth)))
    assert sorted(ids) == list(range(n))
    assert fourth.state_dict()["complete"]


def _shard_opens(monkeypatch, manifest, readers: list | None = None) -> list[tuple[int, int | None]]:
    """Spy on the export's storage: the (start, end) of every open of a shard file (and its reader)."""
    opens: list[tuple[int, int | None]] = []
    cls = type(manifest.storage)
    original = cls.open_read
    names = {s["name"] for s in manifest.shards}

    def spy(self, name, start=0, end=None, **kw):
        f = original(self, name, start, end, **kw)
        if name in names:
            opens.append((start, end))
            if readers is not None:
                readers.append(f)
        return f

    monkeypatch.setattr(cls, "open_read", spy)
    return opens


def test_local_block_order_opens_each_run_of_needed_samples_once(one_shard_per_sample, monkeypatch):
    """A fresh epoch of a one-shard local export in the block order (blocks of 64 KiB) opens the shard once
    (the read needs every sample: one run), not once per chunk of every block; the samples and their order are those of
    the per-chunk reads (WDSPQ_MMAP=0 reads each chunk through the reader's error policy)."""
    one_shard = one_shard_per_sample
    from wdspq import epoch_order

    monkeypatch.setattr(epoch_order, "BLOCK_BYTES", 2**16)  # several blocks in this small shard
    m = load_manifest(one_shard)
    stream = wdspq.ShardStream(one_shard, seed=5)
    assert stream.shard_order == "block" and len(m.shards) == 1 and stream._blocks[0] < m.shard_sizes[0] // 4
    assert _runs(stream.in_shard_order(0, 0)[:CHUNKS * 3]) > 3  # consecutive samples come from different chunks
    opens = _shard_opens(monkeypatch, m)
    got = [(int(x["window_index"]), x["actions"].numpy().tobytes()) for x in stream]
    assert opens == [(0, int(m.offsets(0)[-1]))]
    monkeypatch.setenv("WDSPQ_MMAP", "0")
    opens.clear()
    want = [(int(x["window_index"]), x["actions"].numpy().tobytes()) for x in wdspq.ShardStream(one_shard, seed=5)]
    assert got == want and len(opens) > len(m.shards)


def test_mapped_samples_take_positions_across_gaps(one_shard_per_sample, monkeypatch):
    """MappedSamples: positions from several runs of needed samples, one open per run touched (covering
    only that run), records equal to read_records', bytes_read counting only the samples taken."""
    one_shard = one_shard_per_sample
    from wdspq.shardfmt import read_records
    from wdspq.shardfmt.read import MappedSamples

    m = load_manifest(one_shard)
    n = m.shard_sizes[0]
    needed = np.array([p for p in range(n) if p % 7 not in (3, 4)])  # runs of five, gaps of two
    take_ = needed[::3]
    readers: list = []
    opens = _shard_opens(monkeypatch, m, readers)
    mapped = MappedSamples.create(m, 0, needed)
    assert mapped is not None
    got = [bytes(r) for r in mapped.take(take_)]
    mapped.close()
    readers = readers[:]  # the mapped reads' (read_records below adds its own)
    want = [bytes(next(read_records(m, 0, int(p), int(p) + 1))) for p in take_]
    assert got == want
    off = m.offsets(0)
    runs = [(int(r[0]), int(r[-1]) + 1) for r in np.split(needed, np.flatnonzero(np.diff(needed) != 1) + 1)]
    touched = [(a, b) for a, b in runs if any(a <= p < b for p in take_)]
    assert 1 < len(touched) < len(take_)
    assert opens == [(int(off[a]), int(off[b])) for a, b in touched] + [(int(off[p]), int(off[p + 1])) for p in take_]
    lengths = np.diff(off)
    assert sum(f.bytes_read for f in readers) == int(sum(lengths[take_]))
    monkeypatch.setenv("WDSPQ_MMAP", "0")
    assert MappedSamples.create(m, 0, needed) is None  # mapping off: per-run reads


def test_local_block_order_decodes_each_record_as_it_is_handed_out(one_shard, monkeypatch):
    """A local shard in the block order: a block is mapped in one go, but each record is decoded when its
    sample is handed out, not the whole block before its first sample (that made one batch in a block's
    worth carry the block's decode, and DataLoader workers wait for each other); the samples are those of
    the per-chunk reads."""
    from wdspq import epoch_order
    from wdspq.shardfmt.encoding import SampleCodec

    monkeypatch.setattr(epoch_order, "BLOCK_BYTES", 2**16)  # several blocks in this small shard
    stream = wdspq.ShardStream(one_shard, seed=5)
    assert stream.shard_order == "block" and stream._blocks[0] >= CHUNKS
    decoded = [0]
    original = SampleCodec.record_from

    def counting(self, payload, where):
        decoded[0] += 1
        return original(self, payload, where)

    monkeypatch.setattr(SampleCodec, "record_from", counting)
    ahead, got = [], []
    for k, x in enumerate(stream):
        ahead.append(decoded[0] - k)  # records decoded before this sample, beyond those handed out
        got.append((int(x["window_index"]), x["actions"].numpy().tobytes()))
    assert max(ahead) == 1 and decoded[0] == len(got)
    monkeypatch.setenv("WDSPQ_MMAP", "0")
    assert got == [(int(x["window_index"]), x["actions"].numpy().tobytes()) for x in wdspq.ShardStream(one_shard, seed=5)]


def test_format_1_states_resume_in_the_sequential_order_only(small_table, tokenizer_path, tmp_path):
    export = make_export(small_table, tokenizer_path, tmp_path)
    def loader(order):
        return wdspq.StreamLoader(wdspq.ShardStream(export, seed=3, shard_order=order), batch_size=8)

    full = indices(take(loader("sequential")))
    head_loader = loader("sequential")
    head = indices(take(head_loader, 11))
    state = json.loads(json.dumps(head_loader.state_dict()))
    old = {k: v for k, v in state.items() if k not in ("shard_order", "consumed")}
    old["version"] = 1  # what wdspq saved before in-shard orders (same fields, same plan)
    resumed = loader("sequential")
    resumed.load_state_dict(old)
    assert head + indices(take(resumed)) == full
    with pytest.raises(StateError, match="shard_order='sequential' in the state vs 'block'.*format 1"):
        loader(None).load_state_dict(old)


# ----------------------------------------------------------------------------------------------
# batch-mates across epochs


def _batchmates():
    spec = importlib.util.spec_from_file_location("batchmates", ROOT / "tools" / "batchmates.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


@pytest.mark.parametrize("sample_bytes", [17_800, 7_004, 102_944, 3_000_000])
def test_batch_mates_change_from_epoch_to_epoch(sample_bytes):
    """24 shards x 200, 2 workers, batch 16, interleave 4: the block order repeats <= 2 % of epoch 1's
    batch-mate pairs (the sequential order, the only one before: 20 %); 1,000 x 1,000, 8 workers, batch
    64: <= 1 % whatever the sample size (sequential: 17.4 %; fixed blocks of 102.9 kB samples: 3.96 %)."""
    bm = _batchmates()
    small = Topology(num_workers=2, batch_size=16, interleave=4)
    assert bm.repeat_rate([200] * 24, sample_bytes, small, "block") <= 0.02
    assert bm.repeat_rate([200] * 24, sample_bytes, small, "sequential") > 0.15
    big = Topology(num_workers=8, batch_size=64, interleave=4)
    assert bm.repeat_rate([1000] * 1000, sample_bytes, big, "block") <= 0.01
