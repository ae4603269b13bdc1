"""ShardStream / StreamLoader on a real export: parity, R1-R5 and epochs (README "Streaming and resuming exactly"):
the shard cursor.

Every test uses one small export (tests/stream_child.py: 394 windows in 9 uneven shards) built once per
session. Expected orders come from the cursor's plan (wdspq.cursor.Plan) mapped to window indices by
reading the shards directly, so a test checks the delivered batches, not just their union.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stream_child import SPEC, indices, make_export, make_loader, real, take, window_map

import wdspq
from wdspq.cursor import CursorState, Plan, Topology, epoch_shard_order, set_digest_of
from wdspq.shardfmt import load_manifest

HERE = Path(__file__).resolve().parent
B = 8


@pytest.fixture(scope="module")
def export(small_table, tokenizer_path, tmp_path_factory) -> str:
    """The shared small export (session-cached in stream_child)."""
    return make_export(small_table, tokenizer_path, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def per_sample(small_table, tokenizer_path, tmp_path_factory) -> str:
    """The same windows, one member per sample: for the tests that count a sample's own bytes."""
    return make_export(small_table, tokenizer_path, tmp_path_factory.getbasetemp(), layout="per-sample")


@pytest.fixture(scope="module")
def wmap(export) -> dict[tuple[int, int], int]:
    return window_map(export)


@pytest.fixture(scope="module")
def n_windows(export) -> int:
    return load_manifest(export).num_windows


@pytest.fixture(scope="module")
def reference(small_table, tokenizer_path) -> wdspq.ParquetWindowDataset:
    return wdspq.ParquetWindowDataset(small_table, wdspq.WindowSpec(**SPEC), tokenizer=tokenizer_path)


def ordinal_map(export: str, wmap: dict, seed: int = 0, epoch: int = 0, shuffle: bool = True) -> dict:
    """(shard, ordinal of the epoch's in-shard order) -> window_index (the plan's positions are ordinals)."""
    stream = wdspq.ShardStream(export, seed=seed, shuffle=shuffle)
    return {(s, q): wmap[(s, int(p))] for s in range(len(stream.shard_sizes))
            for q, p in enumerate(stream.in_shard_order(s, epoch))}


def expected(export: str, wmap: dict, topo: Topology, rank: int = 0, seed: int = 0, epoch: int = 0,
             shuffle: bool = True) -> list[list[int]]:
    """window_index lists of a fresh epoch's batches for `rank`, from the plan (pads -1)."""
    sizes = load_manifest(export).shard_sizes
    plan = Plan(sizes, [0] * len(sizes), epoch_shard_order(len(sizes), seed, epoch, shuffle), topo,
                split=shuffle)
    wmap = ordinal_map(export, wmap, seed, epoch, shuffle)
    per_worker = []
    for w in range(topo.workers):
        s, p, pad = plan.slot_arrays(topo.slot(rank, w))
        wi = [-1 if d else wmap[(a, b)] for a, b, d in zip(s.tolist(), p.tolist(), pad.tolist())]
        per_worker.append([wi[i : i + topo.batch_size] for i in range(0, len(wi), topo.batch_size)])
    nth = [0] * topo.workers
    out = []
    for w, n in plan.batch_order(rank):
        out.append(per_worker[w][nth[w]])
        nth[w] += 1
        assert len(out[-1]) == n
    return out


def assert_exactly_once(ids: list[int], n: int) -> None:
    dup = [i for i, c in Counter(ids).items() if c > 1]
    assert not dup, f"windows delivered twice: {dup[:10]}"
    assert sorted(ids) == list(range(n)), f"missing windows: {sorted(set(range(n)) - set(ids))[:10]}"


def assert_batches_equal(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> None:
    assert len(a) == len(b)
    for t, (x, y) in enumerate(zip(a, b)):
        assert x.keys() == y.keys(), t
        for k in x:
            assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), (t, k)


def run_child(jobs: list[dict[str, Any]], tmp_path: Path) -> list[dict[str, Any]]:
    """Run jobs in a fresh Python process (tests/stream_child.py); returns its results."""
    jobs_path, out_path = tmp_path / "jobs.json", tmp_path / "out.json"
    jobs_path.write_text(json.dumps(jobs))
    proc = subprocess.run([sys.executable, str(HERE / "stream_child.py"), str(jobs_path), str(out_path)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out_path.read_text())


# ----------------------------------------------------------------------------------------------
# parity and plan


def check_sample(sample: dict[str, torch.Tensor], reference: wdspq.ParquetWindowDataset) -> None:
    ref = reference[int(sample["window_index"])]
    assert list(sample) == list(ref)
    for k, v in ref.items():
        assert sample[k].dtype == v.dtype and sample[k].shape == v.shape, k
        assert torch.equal(sample[k], v), (k, int(sample["window_index"]))


@pytest.mark.parametrize("layout", ["default", "per-sample"])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_parity_with_map_style_dataset(export, per_sample, reference, n_windows, num_workers, layout):
    """Every streamed sample equals ParquetWindowDataset[window_index]: keys, dtypes, shapes, values (the
    default layout, shared frames, and per-sample)."""
    stream = wdspq.ShardStream(export if layout == "default" else per_sample, seed=1)
    if num_workers == 0:  # the stream itself, iterated directly: one sample dict at a time
        samples = list(stream)
    else:  # default collation in the workers; each batch row is one sample
        loader = wdspq.StreamLoader(stream, batch_size=B, num_workers=num_workers)
        samples = [{k: v[i] for k, v in b.items()} for b in loader for i in range(len(b["window_index"]))]
        assert loader.state_dict()["complete"]
    assert_exactly_once([int(s["window_index"]) for s in samples], n_windows)
    for s in samples:
        check_sample(s, reference)


def test_collate_fn_that_keeps_the_list(export, reference):
    """A collate_fn returning the list of sample dicts is counted per sample (not per tensor row)."""
    loader = wdspq.StreamLoader(wdspq.ShardStream(export, seed=1), batch_size=B, collate_fn=list)
    batches = take(loader, 3)
    assert [len(b) for b in batches] == [B] * 3
    for s in batches[1]:
        check_sample(s, reference)
    st = loader.state_dict()
    assert st["delivered"] == [3 * B] and st["digest"]["set"][0] == set_digest_of(
        [int(s["window_index"]) for b in batches for s in b])


@pytest.mark.parametrize("world_size,num_workers,even", [(1, 2, "pad"), (2, 0, "pad"), (2, 2, "none")])
def test_stream_delivers_the_plan(export, wmap, world_size, num_workers, even):
    """R2: the batches of every rank are exactly the cursor's plan (order, batching, worker rotation)."""
    topo = Topology(world_size=world_size, num_workers=num_workers, batch_size=B, interleave=3, even=even)
    for rank in range(world_size):
        stream = wdspq.ShardStream(export, seed=4, interleave=3, even=even, rank=rank, world_size=world_size)
        loader = wdspq.StreamLoader(stream, batch_size=B, num_workers=num_workers)
        want = expected(export, wmap, topo, rank, seed=4)
        assert len(loader) == len(want)
        assert indices(take(loader)) == want


# ----------------------------------------------------------------------------------------------
# R1: exactly once over ranks and workers, even ranks


def run_ranks(export: str, world_size: int, num_workers: int, even: str, seed: int = 2) -> list[list[list[int]]]:
    """One epoch of every rank (explicit rank/world_size), as window_index lists per batch."""
    out = []
    for rank in range(world_size):
        loader = make_loader(dict(source=export, seed=seed, even=even, rank=rank, world_size=world_size,
                                  batch_size=B, num_workers=num_workers))
        out.append(indices(take(loader)))
        assert loader.state_dict()["complete"]
    return out


def test_r1_two_ranks_two_workers_pad(export, n_windows, reference):
    ranks = run_ranks(export, 2, 2, "pad")
    assert len(ranks[0]) == len(ranks[1])  # every rank yields the same number of batches
    flat = [i for r in ranks for b in r for i in b]
    assert_exactly_once(real([b for r in ranks for b in r]), n_windows)
    n_pads = flat.count(-1)
    assert n_pads > 0 and n_pads % B == 0  # the uneven shards need padding here; pads come in whole batches
    assert all(0 < len(b) <= B for r in ranks for b in r)
    # a pad is a real sample (a repeat), flagged only by window_index == -1
    loader = make_loader(dict(source=export, seed=2, rank=0, world_size=2, batch_size=B, num_workers=0,
                              even="pad"))
    pads = [(b, i) for b in take(loader) for i, w in enumerate(b["window_index"].tolist()) if w == -1]
    for b, i in pads:
        assert b["episode_index"][i] >= 0 and b["actions_mask"][i].any()


def test_r1_drop_and_none(export, wmap, n_windows):
    """even="drop": equal batch counts, the dropped tail is exactly the plan's; "none": no balancing."""
    ranks = run_ranks(export, 2, 2, "drop")
    assert len(ranks[0]) == len(ranks[1])
    ids = real([b for r in ranks for b in r])
    assert -1 not in [i for r in ranks for b in r for i in b] and len(set(ids)) == len(ids)
    sizes = load_manifest(export).shard_sizes
    topo = Topology(world_size=2, num_workers=2, batch_size=B, even="drop")
    plan = Plan(sizes, [0] * len(sizes), epoch_shard_order(len(sizes), 2, 0, True), topo)
    dropped = sum(plan.slot_dropped_count(s) for s in range(topo.n_slots))
    assert dropped > 0 and len(ids) == n_windows - dropped

    ranks = run_ranks(export, 2, 2, "none")
    assert_exactly_once(real([b for r in ranks for b in r]), n_windows)
    assert -1 not in [i for r in ranks for b in r for i in b]
    topo = Topology(world_size=2, num_workers=2, batch_size=B, even="none")
    assert [len(r) for r in ranks] == [len(expected(export, wmap, topo, k, seed=2)) for k in range(2)]


# ----------------------------------------------------------------------------------------------
# R3: exact resume in a fresh process


def stop_points(full: list[list[int]], wmap: dict, sizes: list[int]) -> dict[str, int]:
    """Batches to run before stopping: first batch, mid-shard, a shard boundary, last batch (`wmap` maps
    (shard, ordinal of the epoch's order) to window_index)."""
    where = {w: k for k, w in wmap.items()}
    ends_shard = [where[b[-1]][1] == sizes[where[b[-1]][0]] - 1 for b in full]
    boundary = next(t for t in range(1, len(full) - 1) if ends_shard[t])
    mid = next(t for t in range(len(full) // 2, len(full)) if not ends_shard[t])
    return {"first": 1, "mid-shard": mid + 1, "shard-boundary": boundary + 1, "last": len(full)}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_r3_exact_resume_in_a_fresh_process(export, wmap, tmp_path, num_workers):
    job = dict(source=export, seed=5, batch_size=B, num_workers=num_workers)
    uninterrupted = make_loader(job)
    full = take(uninterrupted)
    full_idx = indices(full)
    final = uninterrupted.state_dict()
    stops = stop_points(full_idx, ordinal_map(export, wmap, seed=5), load_manifest(export).shard_sizes)
    jobs = []
    for name, t in stops.items():
        loader = make_loader(job)
        head = take(loader, t)
        assert indices(head) == full_idx[:t]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(loader.state_dict()))
        jobs.append({**job, "state": str(path)})
        if num_workers == 0:  # whole batches, torch.equal, in this process
            resumed = make_loader(job)
            resumed.load_state_dict(json.loads(path.read_text()))
            assert_batches_equal(head + take(resumed), full)
    for (name, t), res in zip(stops.items(), run_child(jobs, tmp_path)):
        assert full_idx[:t] + res["batches"] == full_idx, name
        assert res["state"]["digest"] == final["digest"], name  # the audit digest survives the restart
        assert res["state"]["complete"]


def test_r3_resume_of_a_padded_rank(export):
    """Same-topology resume of rank 1 of 2 (pads included): the rank's rest is exactly the same."""
    job = dict(source=export, seed=2, rank=1, world_size=2, batch_size=B, num_workers=2)
    full = take(make_loader(job))
    loader = make_loader(job)
    head = take(loader, len(full) - 2)  # stop inside the pads
    resumed = make_loader(job)
    resumed.load_state_dict(json.loads(json.dumps(loader.state_dict())))
    assert_batches_equal(head + take(resumed), full)


# ----------------------------------------------------------------------------------------------
# R4: elastic resume


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("new_world,new_workers", [(1, 3), (3, 1)])
def test_r4_elastic_resume(export, n_windows, new_world, new_workers):
    """Save under world 2 x workers 2 (merged), finish under another topology: exactly once overall."""
    before, states = [], []
    for rank, stop in ((0, 7), (1, 4)):
        loader = make_loader(dict(source=export, seed=6, rank=rank, world_size=2, batch_size=B, num_workers=2))
        before += indices(take(loader, stop))
        states.append(loader.state_dict())
    merged = json.loads(json.dumps(wdspq.merge_states(states)))
    after = []
    for rank in range(new_world):
        loader = make_loader(dict(source=export, seed=6, rank=rank, world_size=new_world, batch_size=5,
                                  num_workers=new_workers))
        loader.load_state_dict(merged)
        after.append(indices(take(loader)))
        assert loader.state_dict()["complete"]
    assert len({len(a) for a in after}) == 1  # even ranks after the resume too
    assert_exactly_once(real(before) + real([b for a in after for b in a]), n_windows)


# ----------------------------------------------------------------------------------------------
# R5: resuming never reads the skipped samples


def delivered_positions(state: dict[str, Any], stream: wdspq.ShardStream) -> list[set[int]]:
    """Per shard, the sample positions (in the file) delivered before `state`: its plan's fold mapped
    through the epoch's in-shard order."""
    st = CursorState.from_dict(state)
    base, ranges = Plan.for_state(st, stream.shard_sizes).fold(st.delivered)
    out = []
    for s in range(len(stream.shard_sizes)):
        perm = stream.in_shard_order(s, st.epoch)
        ords = list(range(base[s])) + [q for t, a, b in ranges if t == s for q in range(a, b)]
        out.append({int(perm[q]) for q in ords})
    return out


@pytest.mark.parametrize("shard_order, stop", [("block", 20), ("block", 45), ("sequential", 20)])
def test_r5_resume_reads_only_what_is_left(per_sample, monkeypatch, shard_order, stop):
    """Resume at ~40 % and ~90 %: every read covers only samples not yet delivered, and the bytes read are
    exactly those of the samples left (no skipped sample is read), in either in-shard order (per-sample
    layout; shared frames, whose reads also hold packs: test_shared_frames)."""
    export = per_sample
    job = dict(source=export, seed=7, batch_size=B, num_workers=0, shard_order=shard_order)
    loader = make_loader(job)
    take(loader, stop)
    state = loader.state_dict()
    m = load_manifest(export)
    done = delivered_positions(state, loader.stream)
    n_done = sum(len(d) for d in done)
    assert 0 < n_done < m.num_windows and any(0 < len(d) < n for d, n in zip(done, m.shard_sizes))
    if stop == 45:
        assert n_done >= 0.85 * m.num_windows

    resumed = make_loader(job)
    resumed.load_state_dict(state)
    reads: list[tuple[str, int, int | None, Any]] = []
    storage_cls = type(resumed.stream.manifest.storage)
    original = storage_cls.open_read

    def spy(self, name, start=0, end=None, **kw):
        f = original(self, name, start, end, **kw)
        reads.append((name, start, end, f))
        return f

    monkeypatch.setattr(storage_cls, "open_read", spy)
    take(resumed)
    names = [s["name"] for s in m.shards]
    reads = [r for r in reads if r[0] in names]  # index sidecars are read whole (a few bytes per sample)
    expected_bytes = 0
    for s in range(len(m.shards)):
        lengths = np.diff(m.offsets(s))
        expected_bytes += int(sum(int(n) for p, n in enumerate(lengths) if p not in done[s]))
    for name, start, end, _f in reads:
        s = names.index(name)
        off = m.offsets(s)
        hit = [p for p in done[s] if start <= off[p] < (end if end is not None else off[-1])]
        assert not hit, f"{name}: bytes {start}..{end} cover samples {hit} delivered before the resume point"
    assert sum(f.bytes_read for *_, f in reads) == expected_bytes


def test_r5_corrupt_samples_before_the_resume_point(per_sample, tmp_path):
    """Garbage over every sample delivered before the resume point: the resume does not notice (per-sample
    layout: a shared-frames pack also serves samples still to come)."""
    export = per_sample
    job = dict(source=export, seed=7, batch_size=B, num_workers=2)
    full = indices(take(make_loader(job)))
    loader = make_loader(job)
    head = indices(take(loader, 20))
    state = loader.state_dict()
    copy = tmp_path / "corrupt"
    shutil.copytree(export, copy)
    m = load_manifest(export)
    done = delivered_positions(state, loader.stream)
    rng = np.random.default_rng(0)
    for i, (shard, d) in enumerate(zip(m.shards, done)):
        off = m.offsets(i).tolist()
        with open(copy / shard["name"], "r+b") as f:
            for p in sorted(d):
                f.seek(off[p])
                f.write(rng.integers(0, 256, off[p + 1] - off[p], dtype=np.uint8).tobytes())
    with pytest.raises(wdspq.ShardError):  # the corruption is real: a fresh epoch trips over it
        take(make_loader({**job, "source": str(copy), "num_workers": 0}))
    resumed = make_loader({**job, "source": str(copy)})
    resumed.load_state_dict(state)  # same manifest bytes: same identity
    assert head + indices(take(resumed)) == full


# ----------------------------------------------------------------------------------------------
# epochs


def test_epoch_orders(export, wmap):
    job = dict(source=export, seed=9, batch_size=B, num_workers=0)
    topo = Topology(batch_size=B)
    runs = {}
    for epoch in (0, 1):
        loader = make_loader(job)
        loader.set_epoch(epoch)
        runs[epoch] = indices(take(loader))
        assert runs[epoch] == expected(export, wmap, topo, seed=9, epoch=epoch)
    assert runs[0] != runs[1]
    again = make_loader(job)
    again.set_epoch(1)
    assert indices(take(again)) == runs[1]  # same seed and epoch: same order
    other_seed = make_loader({**job, "seed": 10})
    assert indices(take(other_seed)) != runs[0]


@pytest.mark.parametrize("persistent", [False, True])
def test_three_epochs_reach_every_worker(export, wmap, n_windows, persistent):
    """set_epoch (and the implicit advance after a finished epoch) reaches the workers, persistent or not."""
    job = dict(source=export, seed=11, batch_size=B, num_workers=2, persistent_workers=persistent)
    topo = Topology(num_workers=2, batch_size=B)
    loader = make_loader(job)
    orders = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        orders.append(indices(take(loader)))
        assert orders[-1] == expected(export, wmap, topo, seed=11, epoch=epoch), epoch
        assert_exactly_once(real(orders[-1]), n_windows)
    assert len({json.dumps(o) for o in orders}) == 3
    if persistent:  # no set_epoch: a finished epoch moves the next iter() on, in the live workers too
        implicit = make_loader(job)
        assert [indices(take(implicit)) for _ in range(2)] == orders[:2]
        assert implicit.epoch == 1


def test_epoch_after_a_resume_equals_the_uninterrupted_one(export):
    job = dict(source=export, seed=12, batch_size=B, num_workers=0)
    uninterrupted = make_loader(job)
    epochs = []
    for epoch in range(2):
        uninterrupted.set_epoch(epoch)
        epochs.append(indices(take(uninterrupted)))
    loader = make_loader(job)
    head = indices(take(loader, 9))
    state = json.loads(json.dumps(loader.state_dict()))
    resumed = make_loader(job)
    resumed.load_state_dict(state)
    got = []
    for epoch in range(state["epoch"], 2):  # the documented restart loop
        resumed.set_epoch(epoch)
        got.append(indices(take(resumed)))
    assert head + got[0] == epochs[0] and got[1] == epochs[1]
    assert set_digest_of(real(got[1])) == resumed.state_dict()["digest"]["set"][0]


@pytest.mark.parametrize("kwargs", [dict(in_order=False), dict(shuffle=True), dict(drop_last=True)])
def test_loader_refuses_arguments_that_break_the_plan(export, kwargs):
    """in_order=False hands batches over in completion order: the main-process cursor would credit them
    to the wrong workers (R2 order and R3 state silently wrong), so it is refused like shuffle/drop_last."""
    with pytest.raises(wdspq.WdspqError, match=next(iter(kwargs))):
        wdspq.StreamLoader(wdspq.ShardStream(export, seed=1), batch_size=B, num_workers=2, **kwargs)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_in_worker_collation_equals_default_collate(per_sample, num_workers):
    """The in-worker batched path (one shared block per batch) equals default_collate of the per-sample
    path: keys, dtypes, shapes, strides and values, pads (window_index -1) and short last batches included."""
    from torch.utils.data import default_collate

    def run(collate_fn):
        stream = wdspq.ShardStream(per_sample, seed=2, rank=1, world_size=2, even="pad")  # uneven shards
        return take(wdspq.StreamLoader(stream, batch_size=B, num_workers=num_workers, collate_fn=collate_fn))

    batched, reference = run(None), run(default_collate)
    assert_batches_equal(batched, reference)
    assert any((b["window_index"] == -1).any() for b in batched)  # pads are covered
    assert any(len(b["window_index"]) < B for b in batched)  # short batches are covered
    for x, y in zip(batched, reference):
        for k in x:
            assert x[k].shape == y[k].shape and x[k].stride() == y[k].stride() and x[k].is_contiguous(), k


def test_loader_reports_its_batch_size(export):
    """The DataLoader underneath batches nothing itself (the stream does), yet `loader.batch_size` is the
    loader's batch size for tools that read it, and it cannot be changed after construction."""
    loader = wdspq.StreamLoader(wdspq.ShardStream(export, seed=1), batch_size=B, num_workers=0)
    assert loader.batch_size == B
    assert len(next(iter(loader))["window_index"]) == B
    with pytest.raises(ValueError):
        loader.batch_size = B + 1


def test_control_block_packs_and_unpacks_the_loaders_plan():
    """The loader's plan for its workers round-trips through the packed block of fixed size, consumed
    ranges padded to the capacity; more ranges than the capacity are refused rather than cut."""
    from wdspq.stream.control import ControlBlock

    topo = Topology(world_size=2, num_workers=3, batch_size=4)
    n = 5
    block = ControlBlock(epoch=7, base=[0, 3, 0, 9, 1], consumed=[[1, 3, 8], [4, 0, 2]], skip=[0, 2, 5, 1, 0, 3],
                         start_worker=[2, 0], generation=11)
    packed = block.pack(topo.n_slots)
    assert len(packed) == ControlBlock.size(n, topo.n_slots, topo.world_size)
    assert ControlBlock.unpack(packed, n, topo.n_slots) == block
    full = ControlBlock(0, [0] * n, [[0, 0, 1]] * (ControlBlock.capacity(n, topo.n_slots) + 1), [0] * 6, [0, 0], 1)
    with pytest.raises(ValueError, match="consumed ranges"):
        full.pack(topo.n_slots)


def test_shard_stream_builds_a_mixture_only_through_the_package():
    """ShardStream([...]) is a MixtureStream because wdspq.stream loads the mixture kind with ShardStream
    (stream/dataset.py never imports it); the class reached through stream/dataset.py alone refuses a list
    with a clear error instead of reading it as a path."""
    code = ("import wdspq.stream.dataset as d, sys\n"
            "assert 'wdspq.stream.mixture' not in sys.modules\n"
            "try:\n    d.ShardStream(['a', 'b'])\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
            "import wdspq\nassert wdspq.ShardStream is d.ShardStream\n"
            "from wdspq.stream.mixture import MixtureStream\nassert d.ShardStream._kinds == [MixtureStream]\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("WdspqError a list of sources is a mixture"), out
