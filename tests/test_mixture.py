"""Weighted mixtures of exports (docs/mixtures.md): schedule shares, passes, keys, per-source statistics,
exact (R3) and elastic (R4) resume, self-checking states (R7), S3 with dropped connections, a kill loop.

Three exports of the shared small table (tests/stream_child.py) with strides 3, 5 and 9 (394, 238 and
133 windows) are the sources; expected sequences come from the pure schedule (wdspq.mixture) and each
source's pass order read directly (`SourceReader.records`), so a test checks the delivered samples.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mixture_child import pairs
from stream_child import SPEC, make_export

import wdspq
from wdspq.errors import StateError, WdspqError
from wdspq.mixture import Schedule, apportion, schedule

HERE = Path(__file__).resolve().parent
WEIGHTS = (0.6, 0.3, 0.1)
STRIDES = (3, 5, 9)
B = 8


@pytest.fixture(scope="module")
def exports(small_table, tokenizer_path, tmp_path_factory) -> list[str]:
    root = tmp_path_factory.getbasetemp()
    return [make_export(small_table, tokenizer_path, root, spec={**SPEC, "stride": s}, samples_per_shard=40)
            for s in STRIDES]


def sources(exports: list[str], weights=WEIGHTS, rename=None) -> list[wdspq.Source]:
    rename = rename or {}
    return [wdspq.Source(p, weight=w, rename=rename.get(j, {})) for j, (p, w) in enumerate(zip(exports, weights))]


def mix(exports, spe=600, seed=0, weights=WEIGHTS, **kw) -> Any:
    return wdspq.ShardStream(sources(exports, weights), seed=seed, samples_per_epoch=spe, **kw)


def loader(exports, spe=600, batch_size=B, num_workers=0, **kw) -> wdspq.StreamLoader:
    return wdspq.StreamLoader(mix(exports, spe, **kw), batch_size=batch_size, num_workers=num_workers)


def run(ld, n: int | None = None) -> list[list[list[int]]]:
    out = []
    if n == 0:
        return out
    for b in ld:
        out.append(pairs(b))
        if n is not None and len(out) == n:
            break
    return out


def real(batches) -> list[tuple[int, int]]:
    return [(s, w) for b in batches for s, w in b if w != -1]


def source_windows(stream, j: int, k0: int, k1: int) -> list[int]:
    """Window indices of samples k0..k1-1 of source j's endless pass sequence, read directly."""
    r = stream.readers[j]
    return [int(r.codec.record_array(rec)["window_index"]) for rec in r.records(k0, k1)]


def epoch_expected(stream, epoch: int) -> Counter:
    """(source, window) multiset one epoch of the mixture must deliver (every rank and worker together)."""
    c: Counter = Counter()
    for j, n in enumerate(stream.counts):
        c.update((j, w) for w in source_windows(stream, j, epoch * n, (epoch + 1) * n))
    return c


# ----------------------------------------------------------------------------------- schedule and passes


@pytest.mark.parametrize("case", range(12))
def test_schedule_shares_over_the_epoch_and_every_1000_window(case: int) -> None:
    rng = np.random.default_rng(case)
    k = int(rng.integers(1, 7))
    weights = rng.random(k) + (0.02 if case % 2 else 0.3)
    total = int(rng.integers(3000, 40000))
    counts = apportion(weights, total)
    assert sum(counts) == total
    share = weights / weights.sum()
    assert np.all(np.abs(np.array(counts) / total - share) <= 0.01)
    src = schedule(counts)
    onehot = np.zeros((k, total + 1))
    for j in range(k):
        onehot[j, 1:] = np.cumsum(src == j)
    win = (onehot[:, 1000:] - onehot[:, :-1000]) / 1000.0  # every window of 1,000 consecutive positions
    assert np.abs(win - share[:, None]).max() <= 0.01
    # running count within 2 samples of the target at every point of the epoch
    pos = np.arange(total + 1)
    assert np.abs(onehot - np.outer(np.array(counts) / total, pos)).max() <= 2.0


def test_schedule_is_a_pure_function() -> None:
    a, b = Schedule([300, 150, 50]), Schedule([300, 150, 50])
    assert np.array_equal(a.src, b.src)
    assert [a.at(g) for g in range(0, 500, 37)] == [b.at(g) for g in range(0, 500, 37)]
    assert all(a.at(int(a.where[j][k])) == (j, k) for j in range(3) for k in (0, 7, 49))


def test_a_pass_delivers_every_window_once_before_any_repeats(exports) -> None:
    stream = mix(exports, spe=1000)
    for j, r in enumerate(stream.readers):
        seq = source_windows(stream, j, 0, 3 * r.n + 5)
        for p in range(3):
            assert sorted(seq[p * r.n:(p + 1) * r.n]) == sorted(set(seq[:r.n])), (j, p)
            assert len(set(seq[p * r.n:(p + 1) * r.n])) == r.n
        assert seq[:r.n] != seq[r.n:2 * r.n]  # each pass reshuffled
    # a large source is cut at the end of the epoch and continues in the next one
    small = mix(exports, spe=200)
    n0 = small.counts[0]
    assert n0 < small.readers[0].n
    assert epoch_expected(small, 1) == Counter((0, w) for w in source_windows(small, 0, n0, 2 * n0)) + Counter(
        (j, w) for j in (1, 2) for w in source_windows(small, j, small.counts[j], 2 * small.counts[j]))


@pytest.mark.parametrize("world,workers,batch", [(2, 2, 8), (1, 3, 5)])
def test_no_window_repeats_before_its_pass_is_complete_as_delivered(exports, world, workers, batch) -> None:
    """Passes hold in the order the training loop sees: every rank's batches, step by step and rank by rank,
    over three epochs (each source crosses at least one pass boundary, and passes are cut at epoch ends): source j's delivered
    windows, cut into consecutive runs of its N_j windows, are each every window once."""
    loaders = [loader(exports, spe=600, batch_size=batch, num_workers=workers, rank=r, world_size=world)
               for r in range(world)]
    seq: list[tuple[int, int]] = []
    for epoch in range(3):
        per_rank = []
        for ld in loaders:
            ld.set_epoch(epoch)
            per_rank.append(run(ld))
        for step in zip(*per_rank):
            seq.extend(real(step))
    stream = mix(exports, spe=600)
    for j, r in enumerate(stream.readers):
        mine = [w for s, w in seq if s == j]
        assert len(mine) == 3 * stream.counts[j] > r.n  # at least one pass boundary
        for p in range(len(mine) // r.n):
            assert len(set(mine[p * r.n:(p + 1) * r.n])) == r.n, (j, p)
        assert len(set(mine[(len(mine) // r.n) * r.n:])) == len(mine) % r.n


@pytest.mark.parametrize("world,workers,batch", [(1, 0, 8), (2, 2, 5), (3, 1, 16)])
def test_every_epoch_delivers_its_schedule_exactly_once(exports, world, workers, batch) -> None:
    for epoch in (0, 1, 2):
        got: Counter = Counter()
        per_rank = []
        for rank in range(world):
            ld = loader(exports, spe=600, batch_size=batch, num_workers=workers, rank=rank, world_size=world)
            ld.set_epoch(epoch)
            out = run(ld)
            per_rank.append(len(out))
            got.update(real(out))
        stream = mix(exports, spe=600)
        assert got == epoch_expected(stream, epoch), (world, workers, batch, epoch)
        assert sum(got.values()) == 600 and len(set(per_rank)) == 1
        shares = Counter(s for s, _ in got.elements())
        assert [shares[j] for j in range(3)] == [360, 180, 60]


@pytest.mark.parametrize("workers", [0, 2])
def test_shares_of_delivered_batches_stay_close_at_every_point(exports, workers) -> None:
    seq = [s for s, _ in real(run(loader(exports, spe=3001, batch_size=16, num_workers=workers)))]
    assert len(seq) == 3001
    counts = np.cumsum(np.eye(3)[seq], axis=0)
    pos = np.arange(1, len(seq) + 1)[:, None]
    if workers == 0:
        assert np.abs(counts - pos * np.array(WEIGHTS)).max() <= 1.5
    # every 1,000 consecutive delivered samples (workers interleave their stretches batch by batch)
    win = (counts[1000:] - counts[:-1000]) / 1000.0
    assert np.abs(win - np.array(WEIGHTS)).max() <= 0.01


# ------------------------------------------------------------------------------------------------- keys


def test_samples_carry_source_index_and_the_union_of_keys(exports) -> None:
    stream = wdspq.ShardStream(sources(exports, rename={2: {"image": "wrist", "image_mask": "wrist_mask"}}),
                               seed=0, samples_per_epoch=300)
    batches = list(wdspq.StreamLoader(stream, batch_size=20))
    b = batches[0]
    assert b["source_index"].dtype == torch.int64 and "wrist" in b and "image" in b
    for b in batches:
        from2, rest = b["source_index"] == 2, b["source_index"] != 2
        assert not b["image_mask"][from2].any() and (b["image"][from2] == 0).all()
        assert not b["wrist_mask"][rest].any() and (b["wrist"][rest] == 0).all()
        assert b["wrist_mask"][from2].all() and b["image_mask"][rest].all()
    one = next(iter(stream))
    assert set(one) == set(b) and one["source_index"].ndim == 0


def test_a_key_with_another_shape_names_both_sources_and_rename_fixes_it(exports, small_table, tokenizer_path,
                                                                        tmp_path_factory) -> None:
    other = make_export(small_table, tokenizer_path, tmp_path_factory.getbasetemp(),
                        spec={**SPEC, "obs_length_sec": 1.0}, samples_per_shard=40)
    with pytest.raises(WdspqError, match=r"'observations'.*source 0.*source 1.*rename") as e:
        wdspq.ShardStream([wdspq.Source(exports[0]), wdspq.Source(other)])
    assert exports[0] in str(e.value) and other in str(e.value)
    renamed = wdspq.ShardStream([wdspq.Source(exports[0]), wdspq.Source(other, rename={
        "observations": "observations_long", "observations_mask": "observations_long_mask"})], samples_per_epoch=50)
    assert "observations_long" in renamed.schema
    with pytest.raises(WdspqError, match="rename names keys"):
        wdspq.ShardStream([wdspq.Source(exports[0], rename={"nope": "x"})])
    with pytest.raises(WdspqError, match="weight"):
        wdspq.Source(exports[0], weight=0)
    with pytest.raises(WdspqError, match="samples_per_epoch is for mixtures"):
        wdspq.ShardStream(exports[0], samples_per_epoch=10)


def test_renaming_a_stream_renames_its_mask_and_timestamps(exports) -> None:
    # rename the stream key alone (as in `rename={"observation.images.top": "front"}`): its `_mask` and `_ts`
    # follow, so a source's mask never claims a stream that is zeros under the old name
    stream = wdspq.ShardStream(sources(exports, rename={2: {"image": "wrist", "frames": "cam"}}), seed=0,
                               samples_per_epoch=300)
    assert {"wrist", "wrist_mask", "cam", "cam_mask", "cam_ts"} <= set(stream.schema)
    batches = list(wdspq.StreamLoader(stream, batch_size=50))
    assert any(bool((b["source_index"] == 2).any()) for b in batches)
    for b in batches:
        from2, rest = b["source_index"] == 2, b["source_index"] != 2
        assert not b["image_mask"][from2].any() and not b["frames_mask"][from2].any()
        assert (b["frames_ts"][from2] == 0).all()
        assert b["wrist_mask"][from2].all() and not b["wrist_mask"][rest].any()
        assert b["cam_mask"][from2].any() and (b["cam_ts"][from2] != 0).any() and not b["cam_mask"][rest].any()
    # a companion named explicitly keeps its own name
    explicit = wdspq.ShardStream(sources(exports, rename={2: {"image": "wrist", "image_mask": "wrist_ok"}}),
                                 samples_per_epoch=30)
    assert "wrist_ok" in explicit.schema and "wrist_mask" not in explicit.schema


@pytest.mark.parametrize("rename", [{"image": "frames"}, {"image": "x", "actions": "x"}, {"image_mask": "frames_mask"}])
def test_a_rename_onto_a_key_the_source_already_has_is_a_clear_error(exports, rename) -> None:
    with pytest.raises(WdspqError, match=r"rename.*two keys|two keys.*rename") as e:
        wdspq.ShardStream([wdspq.Source(exports[0]), wdspq.Source(exports[1], rename=rename)])
    assert exports[1] in str(e.value)


def test_stats_and_normalize_are_per_source(exports) -> None:
    stream = mix(exports, spe=200)
    stats = stream.stats()
    assert len(stats) == 3 and "actions" in stats[0]
    norm = wdspq.Normalize(stats)
    batch = next(iter(wdspq.StreamLoader(stream, batch_size=64)))
    out = norm(batch)
    for j in range(3):
        sel = batch["source_index"] == j
        want = wdspq.Normalize(stats[j])({k: v[sel] for k, v in batch.items()})
        assert torch.equal(out["actions"][sel], want["actions"])
    back = norm.inverse(out)
    assert torch.allclose(back["actions"], batch["actions"], atol=1e-4)


def test_normalize_covers_a_stream_only_some_sources_have(exports) -> None:
    # one robot's observations renamed (e.g. another dimension): each source's observations are still
    # normalised by its own statistics, rows of sources without the stream are left as they are
    stream = wdspq.ShardStream(sources(exports, rename={1: {"observations": "obs_b"}}), samples_per_epoch=200)
    stats = stream.stats()
    norm = wdspq.Normalize(stats)
    assert {"actions", "observations", "obs_b"} <= set(norm.keys)
    batch = next(iter(wdspq.StreamLoader(stream, batch_size=64)))
    out = norm(batch)
    for j, key in ((0, "observations"), (2, "observations"), (1, "obs_b")):
        sel = batch["source_index"] == j
        assert bool(sel.any())
        want = wdspq.Normalize(stats[j], keys=[key])({k: v[sel] for k, v in batch.items()})
        assert torch.equal(out[key][sel], want[key]) and not torch.equal(out[key][sel], batch[key][sel])
    sel1 = batch["source_index"] == 1
    assert torch.equal(out["observations"][sel1], batch["observations"][sel1])
    assert torch.allclose(norm.inverse(out)["obs_b"], batch["obs_b"], atol=1e-4)
    with pytest.raises(WdspqError, match="nope"):
        wdspq.Normalize(stats, keys=["nope"])


# ----------------------------------------------------------------------------------------------- resume


def _child(job: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    jp, out = tmp_path / "job.json", tmp_path / "out.json"
    jp.write_text(json.dumps(job))
    subprocess.run([sys.executable, str(HERE / "mixture_child.py"), "resume", str(jp), str(out)], check=True,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])})
    return json.loads(out.read_text())


def test_exact_resume_in_a_fresh_process_at_several_save_points(exports, tmp_path) -> None:
    spe, workers = 600, 2
    job = {"sources": [[p, w, {}] for p, w in zip(exports, WEIGHTS)], "samples_per_epoch": spe, "seed": 4,
           "batch_size": B, "num_workers": workers}
    full = run(loader(exports, spe, seed=4, num_workers=workers))
    stream = mix(exports, spe, seed=4)
    # the batch at which source 2 (133 windows, 60 per epoch... here 60) or source 1 finishes its first pass
    g = int(stream.sched.where[1][stream.readers[1].n - 1]) if stream.counts[1] >= stream.readers[1].n else 300
    boundary = max(1, min(len(full) - 1, g // B // workers))
    jobs = []
    for cut in (3, boundary, len(full)):  # mid-pass, near a pass boundary, end of epoch
        ld = loader(exports, spe, seed=4, num_workers=workers)
        assert run(ld, cut) == full[:cut]
        jobs.append((cut, ld.state_dict()))
    for cut, st in jobs:
        json.dumps(st)
        got = _child({**job, "state": st}, tmp_path)
        assert got["batches"] == full[cut:], cut
        assert got["state"]["complete"]


def test_elastic_resume_2x2_to_1x1_and_back(exports) -> None:
    spe = 600
    expected = epoch_expected(mix(exports, spe), 0)
    # 2 ranks x 2 workers, part of the epoch, merged, finished on 1 x 1
    states, first = [], []
    for rank in range(2):
        ld = loader(exports, spe, num_workers=2, rank=rank, world_size=2)
        first += run(ld, 7)
        states.append(ld.state_dict(gather=False))
    merged = wdspq.merge_states(states)
    assert merged["mixture"] == states[0]["mixture"]
    one = loader(exports, spe, batch_size=12)
    one.load_state_dict(merged)
    rest = run(one)
    done = one.state_dict()
    got = Counter(real(first)) + Counter(real(rest))
    assert got == expected
    # and back: 1 x 1 part way, then 2 ranks x 2 workers finish it
    one = loader(exports, spe, batch_size=12)
    head = run(one, 11)
    st = one.state_dict()
    tail = []
    for rank in range(2):
        ld = loader(exports, spe, num_workers=2, rank=rank, world_size=2)
        ld.load_state_dict(st)
        tail += run(ld)
    assert Counter(real(head)) + Counter(real(tail)) == expected
    # a state saved at the end of the epoch stays finished under another topology
    one2 = loader(exports, spe, batch_size=12)
    one2.load_state_dict(done)
    assert run(one2) == []
    st_end = one2.state_dict()
    assert st_end["complete"] and st_end["epoch"] == 0
    for rank in range(2):
        ld = loader(exports, spe, num_workers=2, rank=rank, world_size=2)
        ld.load_state_dict(st_end)
        ld.set_epoch(0)
        assert run(ld) == []


def test_mismatched_states_are_clear_errors(exports) -> None:
    ld = loader(exports, 600)
    run(ld, 3)
    st = ld.state_dict()
    cases = {
        "weight": dict(weights=(0.5, 0.4, 0.1)),
        "samples_per_epoch": dict(spe=700),
        "seed": dict(seed=1),
        "shuffle": dict(shuffle=False),
        "shard_order": dict(shard_order="sequential"),
    }
    for what, kw in cases.items():
        other = loader(exports, **{"spe": 600, **kw})
        with pytest.raises(StateError, match=what):
            other.load_state_dict(st)
    swapped = wdspq.StreamLoader(wdspq.ShardStream(sources([exports[1], exports[0], exports[2]]), seed=0,
                                                   samples_per_epoch=600), batch_size=B)
    with pytest.raises(StateError, match="manifest_id"):
        swapped.load_state_dict(st)
    renamed = wdspq.StreamLoader(wdspq.ShardStream(sources(exports, rename={0: {"image": "img", "image_mask": "img_mask"}}),
                                                   seed=0, samples_per_epoch=600), batch_size=B)
    with pytest.raises(StateError, match="rename"):
        renamed.load_state_dict(st)
    two = wdspq.StreamLoader(wdspq.ShardStream(sources(exports[:2], WEIGHTS[:2]), seed=0, samples_per_epoch=600),
                             batch_size=B)
    with pytest.raises(StateError, match="2 sources|has 3 sources"):
        two.load_state_dict(st)
    single = wdspq.StreamLoader(wdspq.ShardStream(exports[0]), batch_size=B)
    with pytest.raises(StateError, match="mixture"):
        single.load_state_dict(st)
    with pytest.raises(StateError, match="single export"):
        ld.load_state_dict(single.state_dict())
    stripped = {k: v for k, v in st.items() if k != "mixture"}  # e.g. a merge_states result: the id still checks
    with pytest.raises(StateError):
        wdspq.StreamLoader(mix(exports, 600, weights=(0.5, 0.4, 0.1)), batch_size=B).load_state_dict(stripped)
    ok = loader(exports, 600)
    ok.load_state_dict(stripped)


# ---------------------------------------------------------------------------------------------- S3, kills


def test_mixture_with_sources_on_s3_survives_dropped_connections(exports, small_table, tokenizer_path,
                                                                 s3_bucket, fault_proxy) -> None:
    remote = s3_bucket.rstrip("/") + "/drawer"
    wdspq.export_shards(small_table, remote, wdspq.WindowSpec(**{**SPEC, "stride": STRIDES[1]}), tokenizer=tokenizer_path,
                        samples_per_shard=40, seed=3, progress=False)
    opts = {"endpoint_url": fault_proxy.endpoint_url, "backoff": 0.01, "max_retries": 3, "read_timeout": 10.0}
    srcs = [wdspq.Source(exports[0], 0.6), wdspq.Source(remote, 0.3, storage_options=opts), wdspq.Source(exports[2], 0.1)]
    local = run(loader(exports, 600, num_workers=2))
    fault_proxy.clear_requests()
    for n in (20_000, 60_000, 5_000):
        fault_proxy.drop_after(n, target=".tar")
    ld = wdspq.StreamLoader(wdspq.ShardStream(srcs, seed=0, samples_per_epoch=600), batch_size=B, num_workers=2)
    head = run(ld, 10)
    st = ld.state_dict()
    assert head == local[:10]
    again = wdspq.StreamLoader(wdspq.ShardStream(srcs, seed=0, samples_per_epoch=600), batch_size=B, num_workers=2)
    again.load_state_dict(st)
    assert head + run(again) == local
    assert any(r.fault is not None for r in fault_proxy.requests)


@pytest.mark.slow
def test_kill_loop_delivers_the_uninterrupted_per_source_sequence(exports, tmp_path) -> None:
    job = {"sources": [[p, w, {}] for p, w in zip(exports, WEIGHTS)], "samples_per_epoch": 500, "seed": 2,
           "batch_size": B, "num_workers": 2, "epochs": 3}
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "kill"
    ref_dir.mkdir()
    kill_dir.mkdir()
    jp = tmp_path / "job.json"
    jp.write_text(json.dumps(job))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, str(HERE / "mixture_child.py"), "train", str(jp)]
    subprocess.run([*argv, str(ref_dir)], check=True, env=env)
    reference = (ref_dir / "log.jsonl").read_text().splitlines()
    rng = random.Random(5)
    kills = 0
    while kills < 20 and not (kill_dir / "done").exists():
        log = kill_dir / "log.jsonl"
        have = len(log.read_text().splitlines()) if log.exists() else 0
        target = have + rng.randint(1, max(2, (len(reference) - have) // 20))
        proc = subprocess.Popen([*argv, str(kill_dir)], env=env, start_new_session=True)
        while proc.poll() is None:
            n = len(log.read_text().splitlines()) if log.exists() else 0
            if n >= target:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait()
        kills += proc.returncode == -signal.SIGKILL
    if not (kill_dir / "done").exists():
        subprocess.run([*argv, str(kill_dir)], check=True, env=env)
    assert kills == 20
    state = json.loads((kill_dir / "state.json").read_text())
    logged = (kill_dir / "log.jsonl").read_text().splitlines()[:state["logged"]]
    assert logged == reference


def test_source_batches_give_batches_of_one_source_and_resume(exports) -> None:
    def make(**kw):
        return wdspq.StreamLoader(mix(exports, 640, source_batches=8), batch_size=8, **kw)

    full = run(make(num_workers=2))
    assert all(len({s for s, _ in b}) == 1 for b in full)
    got = Counter(s for b in full for s, w in b if w != -1)
    assert [got[j] for j in range(3)] == [384, 192, 64]
    seq = [b[0][0] for b in full]  # the source of each batch, in delivery order: stratified, not random
    counts = np.cumsum(np.eye(3)[seq], axis=0)
    assert np.abs(counts - np.arange(1, len(seq) + 1)[:, None] * np.array(WEIGHTS)).max() <= 2.5
    ld = make(num_workers=2)
    head = run(ld, 9)
    again = make(num_workers=2)
    again.load_state_dict(ld.state_dict())
    assert head + run(again) == full
    # the units are the batches of one virtual shard, not shards of their own: the state does not grow with them
    big = wdspq.StreamLoader(mix(exports, 20_000, source_batches=8), batch_size=8, num_workers=0)
    run(big, 5)
    assert len(json.dumps(big.state_dict())) < 3000
    with pytest.raises(WdspqError, match="batch_size=8"):
        run(wdspq.StreamLoader(mix(exports, 640, source_batches=8), batch_size=16))
    with pytest.raises(WdspqError, match="multiple"):
        mix(exports, 641, source_batches=8)


def test_info_on_a_mixture_file(exports, tmp_path, capsys) -> None:
    from wdspq.cli import main

    f = tmp_path / "mix.json"
    f.write_text(json.dumps({"sources": [{"path": p, "weight": w} for p, w in zip(exports, WEIGHTS)],
                             "samples_per_epoch": 1000}))
    assert main(["info", str(f)]) == 0
    out = capsys.readouterr().out
    assert "3 sources, 1,000 samples per epoch" in out
    assert "60.0%" in out and "1.52" in out  # 600 of source 0's 394 windows: 1.52 passes per epoch
    assert exports[2] in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["0"], ["1"], ["2"])]
    # per source: weight, share, windows, samples per epoch, passes per epoch, path
    assert [r[:6] for r in rows] == [["0", "0.6", "60.0%", "394", "600", "1.52"], ["1", "0.3", "30.0%", "238", "300", "1.26"],
                                     ["2", "0.1", "10.0%", "133", "100", "0.75"]]
    assert [os.path.dirname(r[6]) for r in rows] == exports


def test_a_mixture_file_with_a_misspelt_field_is_a_clear_error(exports, tmp_path) -> None:
    from wdspq.mixture import read_mixture_file

    f = tmp_path / "mix.json"
    f.write_text(json.dumps({"sources": [{"path": exports[0], "weight": 0.7}, {"path": exports[1], "weigth": 0.3}]}))
    with pytest.raises(WdspqError, match=r"source 1.*'weigth'"):  # not silently weight 1
        read_mixture_file(f)
    f.write_text(json.dumps({"sources": [{"path": exports[0]}], "samples_per_epoc": 10}))
    with pytest.raises(WdspqError, match="samples_per_epoc"):
        read_mixture_file(f)
    f.write_text(json.dumps({"sources": [{"path": os.path.relpath(exports[0], tmp_path), "rename": {"image": "w"}}]}))
    (src,), opts = read_mixture_file(f)
    assert src.path == exports[0] and src.rename == {"image": "w"} and src.weight == 1.0 and opts == {}


def test_show_draws_a_sample_of_a_mixture_file_with_its_source_named(exports, tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    from wdspq import viz
    from wdspq.cli import main

    f = tmp_path / "mix.json"
    f.write_text(json.dumps({"sources": [{"path": p, "weight": w} for p, w in zip(exports, WEIGHTS)],
                             "samples_per_epoch": 1000, "seed": 3}))
    delivered = []  # what one process without workers delivers in epoch 1
    ld = wdspq.StreamLoader(mix(exports, 1000, seed=3), batch_size=B)
    ld.set_epoch(1)
    for b in run(ld):
        delivered += b
    for position in (0, 701):
        png = tmp_path / f"{position}.png"
        assert main(["show", str(f), "--window", str(position), "--epoch", "1", "-o", str(png)]) == 0
        out = capsys.readouterr().out
        j, w = delivered[position]
        assert out.startswith(f"mixture sample {position} of epoch 1: source {j}, weight {WEIGHTS[j]}, pass ")
        assert out.splitlines()[1] == exports[j]
        # the same window of that export, drawn with the same caption, is the same picture
        sample, ctx = viz.shards_window(exports[j], w)
        ctx.caption = "\n".join(out.splitlines()[:2])
        assert viz.show_window(sample, tmp_path / "direct.png", ctx) and (tmp_path / "direct.png").read_bytes() == png.read_bytes()
    assert main(["show", str(f), "--window", "1000", "-o", str(tmp_path / "x.png")]) == 2
    assert "out of range (the mixture's epoch has 1,000 samples)" in capsys.readouterr().err
    assert main(["show", str(f), "--stats", "-o", str(tmp_path / "x.png")]) == 2
    assert "give one of its sources" in capsys.readouterr().err
    assert main(["show", exports[0], "--window", "3", "--epoch", "1", "-o", str(tmp_path / "x.png")]) == 2
    assert "mixture file" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, 2])
def test_worker_collation_equals_default_collation_of_samples(exports, workers) -> None:
    from torch.utils.data import default_collate

    fast = list(loader(exports, 300, batch_size=16, num_workers=workers))  # with workers: the shared ring
    slow = list(wdspq.StreamLoader(mix(exports, 300), batch_size=16, num_workers=workers, collate_fn=default_collate))
    # renamed sources are not laid out like the union's prefix: their rows are filled key by key
    renamed = {1: {"image": "wrist"}, 2: {"actions": "act2"}}

    def other() -> Any:
        return wdspq.ShardStream(sources(exports, rename=renamed), seed=0, samples_per_epoch=300)

    assert [bool(d) for d in other()._direct] == [True, False, False]
    fast += list(wdspq.StreamLoader(other(), batch_size=16, num_workers=workers))
    slow += list(wdspq.StreamLoader(other(), batch_size=16, num_workers=workers, collate_fn=default_collate))
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow):
        assert list(a) == list(b)
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _tagged(batch: dict[str, Any]) -> dict[str, Any]:
    """A batch stage: drops window_index, renames source_index, adds a float key."""
    out = {("src" if k == "source_index" else k): v for k, v in batch.items() if k != "window_index"}
    out["half"] = batch["window_index"].to(torch.float32) / 2
    return out


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_a_batch_stage_on_a_two_source_mixture_equals_fn_of_its_batches(exports) -> None:
    stream = wdspq.ShardStream(sources(exports[:2], weights=(0.7, 0.3)), seed=0, samples_per_epoch=200)
    plain = [_tagged({k: v.clone() for k, v in b.items()}) for b in wdspq.StreamLoader(stream, batch_size=B,
                                                                                      num_workers=2)]
    got = [{k: v.clone() for k, v in b.items()}
           for b in wdspq.StreamLoader(stream.map_batch(_tagged), batch_size=B, num_workers=2)]
    assert len(got) == len(plain) and sum(len(b["src"]) for b in got) == 200
    assert all(set(g) == set(p) and all(torch.equal(g[k], p[k]) for k in p) for g, p in zip(got, plain))
