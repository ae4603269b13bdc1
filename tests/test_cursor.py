"""Shard cursor (wdspq.cursor): R1-R4, R6, R7 and the audit digests, on the pure plan logic.

A small DataLoader emulator (`run_rank`) plays the workers and the main process independently of
`Plan.batch_order`; one test checks the emulator's rotation rule against a real torch DataLoader.
"""

from __future__ import annotations

import json
from collections import Counter, deque

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wdspq.cursor import (
    CursorState,
    Piece,
    Plan,
    RankCursor,
    RankDigests,
    Topology,
    _Interleaver,
    check_compatible,
    combine_set_digests,
    epoch_shard_order,
    interleave_reference,
    merge_states,
    mix64,
    new_epoch_state,
    resume,
    set_digest_of,
    update_digests,
)
from wdspq.errors import StateError, WdspqError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANIFEST, SPEC = "m" * 64, "s" * 16


# ----------------------------------------------------------------------------------------------
# helpers: an emulated epoch


def offsets_of(sizes):
    return np.r_[0, np.cumsum(sizes)].astype(np.int64)


def window_index(batch, offsets):
    """Global window index of each entry, -1 for pads (what the stream reports)."""
    return np.array([-1 if pad else offsets[s] + p for s, p, pad in batch], dtype=np.int64)


def run_rank(plan: Plan, rank: int, skip, start: int):
    """Emulate one rank's DataLoader: physical worker j plays logical worker (j + start) % N and
    yields batches of B consecutive entries; the main process takes them round-robin over physical
    workers, dropping a worker when it is exhausted. Returns [(logical worker, batch entries)]."""
    N, B = plan.topology.workers, plan.topology.batch_size
    queues = []
    for j in range(N):
        w = (j + start) % N
        slot = plan.topology.slot(rank, w)
        entries = list(plan.slot_sequence(slot, skip=skip[slot]))
        queues.append((w, deque(entries[i : i + B] for i in range(0, len(entries), B))))
    out, active, j = [], [True] * N, 0
    while any(active):
        if active[j]:
            if queues[j][1]:
                out.append((queues[j][0], queues[j][1].popleft()))
            else:
                active[j] = False
        j = (j + 1) % N
    return out


def fresh_state(sizes, topo, seed=0, epoch=0, shuffle=True):
    return new_epoch_state(MANIFEST, SPEC, seed, shuffle, epoch, len(sizes), topo)


def run_segment(state, sizes, topo, stops=None):
    """Resume `state` under `topo` on every rank and run each rank to its stop (None: to the end).

    Returns (per-rank batches delivered, per-rank saved state dicts (JSON round-tripped), plan)."""
    offsets = offsets_of(sizes)
    batches, saved, plan = [], [], None
    for rank in range(topo.world_size):
        r = resume(state, sizes, topo, rank)
        plan = r.plan
        seq = run_rank(r.plan, rank, r.skip, r.start_worker[rank])
        stop = len(seq) if stops is None else min(stops[rank], len(seq))
        cur = RankCursor(r.plan, rank, r.state)
        assert cur.start_worker == r.start_worker[rank]
        for w, b in seq[:stop]:
            assert cur.record(len(b), window_index(b, offsets)) == w
        batches.append(seq[:stop])
        saved.append(json.loads(json.dumps(cur.state().to_dict())))
    return batches, saved, plan


def real_samples(batches):
    return [(s, p) for rank in batches for _, b in rank for s, p, pad in b if not pad]


def all_samples(sizes):
    return [(s, p) for s, n in enumerate(sizes) for p in range(n)]


sizes_st = st.lists(st.integers(0, 17), min_size=1, max_size=10)
topo_st = st.builds(
    Topology,
    world_size=st.integers(1, 3),
    num_workers=st.integers(0, 3),
    batch_size=st.integers(1, 5),
    interleave=st.integers(1, 4),
    even=st.sampled_from(["pad", "drop", "none"]),
)


# ----------------------------------------------------------------------------------------------
# interleave and planning primitives


@SETTINGS
@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(1, 9)), max_size=8),
    st.integers(1, 5),
    st.data(),
)
def test_interleaver_matches_reference_and_skips(spec, k, data):
    pieces = [Piece(i, a, a + n) for i, (a, n) in enumerate(spec)]
    ref = interleave_reference(pieces, k)
    it = _Interleaver(pieces, k)
    got = [x for s, p in it.chunks(10**9) for x in zip(s.tolist(), p.tolist())]
    assert got == ref
    c = data.draw(st.integers(0, len(ref)))
    it = _Interleaver(pieces, k)
    it.skip(c)
    assert it.emitted() == [sum(1 for s, _ in ref[:c] if s == p.shard) for p in pieces]
    assert [x for s, p in it.chunks(10**9) for x in zip(s.tolist(), p.tolist())] == ref[c:]


def test_interleave_rule_replaces_in_place():
    pieces = [Piece(0, 0, 1), Piece(1, 0, 3), Piece(2, 0, 2)]
    # k=2: open [0,1]; 0 runs out after one sample and 2 takes its position
    assert interleave_reference(pieces, 2) == [(0, 0), (1, 0), (2, 0), (1, 1), (2, 1), (1, 2)]
    assert interleave_reference(pieces, 1) == [(0, 0), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]


def test_epoch_order_generator_is_documented():
    assert np.array_equal(epoch_shard_order(10, 3, 2, True), np.random.default_rng([3, 2]).permutation(10))
    assert np.array_equal(epoch_shard_order(5, 3, 2, False), np.arange(5))
    with pytest.raises(WdspqError):
        epoch_shard_order(5, -1, 0, True)


def test_fresh_equal_shards_deal_round_robin_ranks_first():
    topo = Topology(world_size=2, num_workers=2, batch_size=4)
    plan = Plan([10] * 8, [0] * 8, list(range(8)), topo)
    for i in range(8):
        slot = topo.slot(i % 2, (i // 2) % 2)
        assert Piece(i, 0, 10) in plan.slot_pieces(slot)
    # 4 shards over 2 ranks x 4 workers: each rank gets 2 (not all 4 on rank 0)
    plan = Plan([10] * 4, [0] * 4, list(range(4)), Topology(2, 4, 4))
    assert plan.rank_batches(0) == plan.rank_batches(1) == 6
    assert sum(plan.slot_pad_count(s) for s in range(8)) == 0


def test_topology_validation():
    with pytest.raises(WdspqError, match="batch_size"):
        Topology(batch_size=0)
    with pytest.raises(WdspqError, match="even"):
        Topology(even="repeat")
    assert Topology(num_workers=0).key() == Topology(num_workers=1).key()


def test_skip_is_cheap():
    sizes = [1000] * 2000
    topo = Topology(world_size=1, num_workers=1, batch_size=32, interleave=8)
    plan = Plan(sizes, [0] * 2000, epoch_shard_order(2000, 0, 0, True), topo)
    assert plan.slot_length(0) == 2_000_000
    import tracemalloc

    tracemalloc.start()
    first = next(plan.slot_sequence(0, skip=1_000_000))
    emitted = plan.slot_emitted(0, 1_000_000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2_000_000, peak  # skipping 1M entries never materialises them (8 MB as int64)
    assert sum(emitted) == 1_000_000
    s, p = plan.slot_arrays(0, skip=999_999, limit=2)[:2]
    assert (int(s[1]), int(p[1])) == first[:2]


# ----------------------------------------------------------------------------------------------
# R1, even ranks, R2


@SETTINGS
@given(sizes_st, topo_st, st.integers(0, 5), st.integers(0, 3), st.booleans())
def test_fresh_epoch_exactly_once_and_even(sizes, topo, seed, epoch, shuffle):
    state = fresh_state(sizes, topo, seed, epoch, shuffle)
    batches, saved, plan = run_segment(state, sizes, topo)
    got = Counter(real_samples(batches))
    dropped = sum(plan.slot_dropped_count(s) for s in range(topo.n_slots))
    assert all(c == 1 for c in got.values())
    assert set(got) <= set(all_samples(sizes))
    if topo.even != "drop":
        assert sorted(got) == all_samples(sizes) and dropped == 0
    else:
        assert len(got) + dropped == sum(sizes)
    # batch counts and the plan's batch order agree with the emulated DataLoader
    counts = [len(b) for b in batches]
    for rank in range(topo.world_size):
        assert plan.batch_order(rank) == [(w, len(b)) for w, b in batches[rank]]
        assert plan.rank_batches(rank) == counts[rank]
    if topo.even in ("pad", "drop"):
        assert len(set(counts)) == 1
    # pads: flagged, valid samples, whole batches' worth per slot, only in pad mode
    for rank in batches:
        for _, b in rank:
            for s, p, pad in b:
                assert 0 <= p < sizes[s]
                assert not pad or topo.even == "pad"
    for slot in range(topo.n_slots):
        assert plan.slot_pad_count(slot) % topo.batch_size == 0
    assert all(s["complete"] for s in saved)
    merged = CursorState.from_dict(merge_states(saved))
    assert merged.complete and merged.delivered == plan.full_delivered()
    assert merged.total_set_digest() == set_digest_of([offsets_of(sizes)[s] + p for s, p in got])


def test_determinism_and_epochs_differ():
    sizes = [7, 3, 9, 12, 1, 5, 8, 8, 2, 11] * 2
    topo = Topology(world_size=2, num_workers=2, batch_size=3, interleave=3)

    def arrays(epoch, seed=0):
        plan = Plan(sizes, [0] * len(sizes), epoch_shard_order(len(sizes), seed, epoch, True), topo)
        return [tuple(map(tuple, plan.slot_arrays(s))) for s in range(topo.n_slots)]

    assert arrays(0) == arrays(0)
    assert arrays(0) != arrays(1) != arrays(2) and arrays(0) != arrays(2)
    assert arrays(0, seed=1) != arrays(0)


# ----------------------------------------------------------------------------------------------
# R3 exact resume


def _check_exact_resume(sizes, topo, seed, stops):
    offsets = offsets_of(sizes)
    state = fresh_state(sizes, topo, seed)
    full, end_states, _ = run_segment(state, sizes, topo)
    first, saved, _ = run_segment(state, sizes, topo, stops)
    for rank in range(topo.world_size):
        # a fresh process: only the rank's own JSON state
        r = resume(json.loads(json.dumps(saved[rank])), sizes, topo, rank)
        assert not r.elastic and r.plan.base == tuple([0] * len(sizes))
        rest = run_rank(r.plan, rank, r.skip, r.start_worker[rank])
        assert first[rank] + rest == full[rank]
        cur = RankCursor(r.plan, rank, r.state)
        for _, b in rest:
            cur.record(len(b), window_index(b, offsets))
        # the ordered digest equals the uninterrupted run's
        assert cur.state().digest_ordered[rank] == end_states[rank]["digest"]["ordered"][rank]
        assert cur.state().digest_set[rank] == end_states[rank]["digest"]["set"][rank]


@pytest.mark.parametrize("num_workers", [0, 2, 3])
@pytest.mark.parametrize("even", ["pad", "drop"])
def test_exact_resume_at_every_stop_point(num_workers, even):
    """Every stop point of a 2-rank epoch: first batch, mid-shard, shard boundaries, last batch."""
    sizes = [5, 9, 2, 7, 4, 11, 3]
    topo = Topology(world_size=2, num_workers=num_workers, batch_size=2, interleave=2, even=even)
    plan = Plan(sizes, [0] * len(sizes), epoch_shard_order(len(sizes), 1, 0, True), topo)
    total = plan.rank_batches(0)
    assert total >= 5
    for t in range(total + 1):
        _check_exact_resume(sizes, topo, 1, [t, max(0, total - t)])


@SETTINGS
@given(sizes_st, topo_st, st.integers(0, 3), st.lists(st.floats(0, 1), min_size=3, max_size=3))
def test_exact_resume_property(sizes, topo, seed, fracs):
    plan = Plan(sizes, [0] * len(sizes), epoch_shard_order(len(sizes), seed, 0, True), topo)
    stops = [round(fracs[r] * plan.rank_batches(r)) for r in range(topo.world_size)]
    _check_exact_resume(sizes, topo, seed, stops)


def test_two_consecutive_same_topology_resumes():
    sizes = [6, 13, 4, 9, 8]
    topo = Topology(world_size=1, num_workers=2, batch_size=3, interleave=2)
    state = fresh_state(sizes, topo)
    full, _, _ = run_segment(state, sizes, topo)
    a, s1, _ = run_segment(state, sizes, topo, [2])
    b, s2, _ = run_segment(CursorState.from_dict(s1[0]), sizes, topo, [3])
    c, s3, _ = run_segment(CursorState.from_dict(s2[0]), sizes, topo)
    assert a[0] + b[0] + c[0] == full[0]
    assert s3[0]["complete"]


# ----------------------------------------------------------------------------------------------
# R4 elastic resume


def _check_elastic_chain(sizes, seed, chain):
    """Run segments under the topologies of `chain` [(topology, stop fractions or None)], merging the
    per-rank states between segments; returns everything delivered (real only) and the final state."""
    offsets = offsets_of(sizes)
    state = fresh_state(sizes, chain[0][0], seed)
    delivered = []
    for topo, fracs in chain:
        r = resume(state, sizes, topo)
        stops = None
        if fracs is not None:
            stops = [round(fracs[i % len(fracs)] * r.plan.rank_batches(i)) for i in range(topo.world_size)]
        batches, saved, plan = run_segment(r.state if r.elastic else state, sizes, topo, stops)
        if topo.even in ("pad", "drop"):
            assert len({plan.rank_batches(i) for i in range(topo.world_size)}) == 1
        delivered += real_samples(batches)
        state = CursorState.from_dict(json.loads(json.dumps(merge_states(saved))))
    got = Counter(delivered)
    assert all(c == 1 for c in got.values()), "a window was delivered twice"
    assert state.total_set_digest() == set_digest_of([offsets[s] + p for s, p in got])
    return got, state


@pytest.mark.parametrize("target", [(1, 3), (3, 1)])
@pytest.mark.parametrize("even", ["pad", "none"])
def test_elastic_from_2x2(target, even):
    sizes = [9, 4, 12, 7, 1, 8, 15, 3, 6]
    src = Topology(world_size=2, num_workers=2, batch_size=2, interleave=2, even=even)
    dst = Topology(world_size=target[0], num_workers=target[1], batch_size=2, interleave=2, even=even)
    plan = Plan(sizes, [0] * len(sizes), epoch_shard_order(len(sizes), 0, 0, True), src)
    for t in range(plan.rank_batches(0) + 1):
        got, state = _check_elastic_chain(sizes, 0, [(src, [t / max(1, plan.rank_batches(0))]), (dst, None)])
        assert sorted(got) == all_samples(sizes)
        assert state.complete


@SETTINGS
@given(
    sizes_st,
    st.lists(st.tuples(topo_st, st.lists(st.floats(0, 1), min_size=1, max_size=3)), min_size=1, max_size=3),
    topo_st,
    st.integers(0, 3),
)
def test_elastic_chain_property(sizes, stops, last, seed):
    chain = [*stops, (last, None)]
    got, state = _check_elastic_chain(sizes, seed, chain)
    if all(t.even != "drop" for t, _ in chain):
        assert sorted(got) == all_samples(sizes)
    assert state.complete


def test_elastic_needs_merged_state():
    sizes = [5, 5, 5, 5]
    topo = Topology(world_size=2, num_workers=1, batch_size=2)
    _, saved, _ = run_segment(fresh_state(sizes, topo), sizes, topo, [1, 1])
    with pytest.raises(StateError, match="merge"):
        resume(saved[0], sizes, Topology(world_size=1, num_workers=1, batch_size=2))
    # same topology: the other rank cannot use rank 0's state
    with pytest.raises(StateError, match="rank 1"):
        resume(saved[0], sizes, topo, rank=1)
    # a start-of-epoch state is full: any rank, any topology
    r = resume(fresh_state(sizes, topo).to_dict(), sizes, Topology(3, 2, 1))
    assert r.elastic and r.skip == [0] * 6


# ----------------------------------------------------------------------------------------------
# R6 / R7 state


def test_state_json_round_trip_and_size():
    n = 5000
    sizes = [200] * n
    topo = Topology(world_size=4, num_workers=8, batch_size=32)
    state = fresh_state(sizes, topo)
    d = state.to_dict()
    text = json.dumps(d)
    assert CursorState.from_dict(json.loads(text)) == state
    assert len(text) < 4 * n + 2000  # O(shards + slots), never O(samples)
    plan = Plan.for_state(state, sizes)
    state.base = plan.consumed_after([plan.slot_length(s) // 2 for s in range(topo.n_slots)])
    assert len(json.dumps(state.to_dict())) < 6 * n + 2000
    assert set(d) == {
        "version", "manifest_id", "spec_id", "seed", "shuffle", "epoch", "topology", "shard_order",
        "base", "consumed", "delivered", "digest", "complete",
    }  # fmt: skip


def test_check_compatible_names_the_difference():
    topo = Topology()
    d = fresh_state([3, 3], topo, seed=0).to_dict()
    assert check_compatible(d, MANIFEST, SPEC, 0, True, 2).seed == 0
    with pytest.raises(StateError, match=r"manifest mmmm.*this stream reads abcdef"):
        check_compatible(d, "abcdef" * 10, SPEC, 0, True, 2)
    with pytest.raises(StateError, match="seed 0 in the state vs 1"):
        check_compatible(d, MANIFEST, SPEC, 1, True, 2)
    with pytest.raises(StateError, match="window spec"):
        check_compatible(d, MANIFEST, "other-spec", 0, True, 2)
    with pytest.raises(StateError, match="shuffle"):
        check_compatible(d, MANIFEST, SPEC, 0, False, 2)
    with pytest.raises(StateError, match="2 shards, this stream has 3"):
        check_compatible(d, MANIFEST, SPEC, 0, True, 3)


def test_malformed_states_fail_loudly():
    d = fresh_state([3, 3], Topology(world_size=2)).to_dict()
    with pytest.raises(StateError, match="version"):
        CursorState.from_dict({**d, "version": 99})
    with pytest.raises(StateError, match="missing delivered"):
        CursorState.from_dict({k: v for k, v in d.items() if k != "delivered"})
    with pytest.raises(StateError, match="slots"):
        CursorState.from_dict({**d, "delivered": [0]})
    with pytest.raises(StateError, match="dict"):
        CursorState.from_dict([1, 2])  # type: ignore[arg-type]
    # a count that is not a batch boundary cannot come from a real run
    topo = Topology(world_size=1, num_workers=2, batch_size=4)
    bad = fresh_state([10, 10], topo).to_dict()
    bad["delivered"] = [3, 0]
    with pytest.raises(StateError, match="batch boundary"):
        resume(bad, [10, 10], topo, 0)
    # counts that are not a prefix of the round-robin order either
    bad["delivered"] = [8, 0]
    with pytest.raises(StateError, match="prefix"):
        resume(bad, [10, 10], topo, 0)


def test_merge_states():
    sizes = [4, 7, 2, 9, 5]
    topo = Topology(world_size=3, num_workers=2, batch_size=2)
    _, saved, _ = run_segment(fresh_state(sizes, topo), sizes, topo, [1, 2, 0])
    merged = merge_states(saved)
    assert all(x is not None for x in merged["delivered"])
    assert merge_states([merged, saved[1]]) == merged  # idempotent on agreeing slots
    assert merge_states(saved[::-1]) == merged
    with pytest.raises(StateError, match=r"rank\(s\) \[1\]"):
        merge_states([saved[0], saved[2]])
    with pytest.raises(StateError, match="epoch differs"):
        merge_states([saved[0], {**saved[1], "epoch": 1}])
    conflicting = dict(saved[1])
    conflicting["delivered"] = list(merged["delivered"])
    conflicting["delivered"][0] += 2
    with pytest.raises(StateError, match="slot 0"):
        merge_states([saved[0], conflicting])


# ----------------------------------------------------------------------------------------------
# digests


def test_digest_primitives():
    idx = np.array([5, -1, 7, 2], dtype=np.int64)
    o, s = update_digests("", "0" * 16, idx)
    o2, s2 = update_digests("", "0" * 16, idx[idx >= 0])
    assert (o, s) == (o2, s2)
    assert update_digests(o, s, np.array([-1, -1])) == (o, s)
    # order: the chain changes, the set does not
    o3, s3 = update_digests("", "0" * 16, np.array([2, 7, 5]))
    assert o3 != o and s3 == s
    assert combine_set_digests([set_digest_of([5, 7]), set_digest_of([2])]) == s
    assert mix64(np.array([0, 1])).dtype == np.uint64 and len(set(mix64(np.arange(1000)).tolist())) == 1000


def _splitmix64(i: int) -> int:
    """splitmix64's finaliser in plain Python integers (the oracle for mix64)."""
    m = (1 << 64) - 1
    z = (i + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def test_digests_equal_their_definition_computed_another_way():
    """The documented digests, computed with hashlib, struct and Python integers, batch by batch: the ordered
    chain sha256(previous digest bytes || int64-LE indices) and the set sum of splitmix64 mod 2**64."""
    import hashlib
    import struct

    rng = np.random.default_rng(5)
    batches = [rng.integers(-1, 2**40, size=int(rng.integers(0, 9))).tolist() for _ in range(300)]
    ordered, total = "", 0
    for b in batches:
        real = [i for i in b if i != -1]
        if real:
            ordered = hashlib.sha256(bytes.fromhex(ordered) + struct.pack(f"<{len(real)}q", *real)).hexdigest()
            total = (total + sum(_splitmix64(i) for i in real)) % (1 << 64)
    o, s, lazy = "", "0" * 16, RankDigests()
    for b in batches:
        o, s = update_digests(o, s, np.array(b, dtype=np.int64))
        lazy.add(np.array(b, dtype=np.int64))
    assert (o, s) == (ordered, f"{total:016x}")
    assert (lazy.ordered, lazy.set_digest) == (ordered, f"{total:016x}")
    assert set_digest_of([i for b in batches for i in b]) == f"{total:016x}"


@given(st.lists(st.lists(st.integers(-1, 2**40), max_size=6), max_size=40), st.integers(1, 7),
       st.lists(st.integers(0, 40), max_size=4), st.sampled_from([("", "0" * 16), ("ab" * 32, "0123456789abcdef")]))
@SETTINGS
def test_rank_digests_fold_lazily_to_the_batch_by_batch_digests(batches, fold_every, reads, start):
    """RankDigests (what a loader's main process keeps) equals update_digests applied batch by batch, however
    its folds fall: every few batches, on a read mid-way, batches of only pads, the caller's arrays reused."""
    lazy = RankDigests(*start)
    lazy.FOLD_EVERY = fold_every
    ordered, sets = start
    buf = np.empty(8, dtype=np.int64)  # the caller's batch memory, overwritten after each add (a reused block)
    for i, b in enumerate(batches):
        buf[:len(b)] = b
        lazy.add(buf[:len(b)])
        buf[:] = 123
        ordered, sets = update_digests(ordered, sets, np.array(b, dtype=np.int64))
        if i in reads:
            assert (lazy.ordered, lazy.set_digest) == (ordered, sets)
    assert (lazy.ordered, lazy.set_digest) == (ordered, sets)


# ----------------------------------------------------------------------------------------------
# the rotation rule against a real DataLoader


class _PlanWorkers:
    """Tiny IterableDataset: DataLoader worker j yields logical worker (j + start) % N's entries."""

    def __init__(self, plan, rank, skip, start):
        self.plan, self.rank, self.skip, self.start = plan, rank, skip, start

    def __iter__(self):
        import torch

        info = torch.utils.data.get_worker_info()
        N = self.plan.topology.workers
        j = info.id if info is not None else 0
        w = (j + self.start) % N
        slot = self.plan.topology.slot(self.rank, w)
        for s, p, pad in self.plan.slot_sequence(slot, skip=self.skip[slot]):
            yield torch.tensor([w, s, p, int(pad)])


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize(
    "num_workers, sizes",
    [(0, [9, 2, 14, 5, 3, 8, 1]), (2, [9, 2, 14, 5, 3, 8, 1]), (3, [9, 2, 14, 5, 3, 8, 1]), (3, [7, 4])],
)
def test_rotation_matches_torch_dataloader(num_workers, sizes):
    import torch

    class DS(_PlanWorkers, torch.utils.data.IterableDataset):
        pass

    topo = Topology(world_size=1, num_workers=num_workers, batch_size=3, interleave=2, even="none")
    state = fresh_state(sizes, topo)
    r = resume(state, sizes, topo, 0)
    expected = run_rank(r.plan, 0, r.skip, 0)
    stop = len(expected) // 2 + 1
    cur = RankCursor(r.plan, 0, r.state)
    for _, b in expected[:stop]:
        cur.record(len(b))
    r2 = resume(cur.state().to_dict(), sizes, topo, 0)
    for rr, skip_from in ((r, 0), (r2, stop)):
        loader = torch.utils.data.DataLoader(
            DS(rr.plan, 0, rr.skip, rr.start_worker[0]), batch_size=3, num_workers=num_workers
        )
        got = [(int(b[0, 0]), [tuple(x[1:3].tolist()) + (bool(x[3]),) for x in b]) for b in loader]
        assert got == expected[skip_from:]
