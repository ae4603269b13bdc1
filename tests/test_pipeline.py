"""ShardStream as a webdataset pipeline: user stages in the workers, per-sample randomness inside the
exact-resume guarantee (R3, R4), and the clear error for stages that break the cursor's count.

Every test uses the small export of tests/stream_child.py (394 windows in 9 uneven shards). The user
stages (tests/pipeline_child.py) shift and scale every frame with torch ops seeded per window, add
noise to the states from the sample's numpy generator, and draw once more in a second `rng=True` stage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import webdataset as wds
from pipeline_child import batch_digest, make_loader, make_stream, take, window_digests
from stream_child import make_export

import wdspq
from wdspq.shardfmt import load_manifest
from wdspq.stream.pipeline import StageError

HERE = Path(__file__).resolve().parent
B = 8


@pytest.fixture(scope="module")
def export(small_table, tokenizer_path, tmp_path_factory) -> str:
    return make_export(small_table, tokenizer_path, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def n_windows(export) -> int:
    return load_manifest(export).num_windows


@pytest.fixture(scope="module")
def uninterrupted(export) -> dict[str, Any]:
    """One epoch of the augmented stream, 2 workers: its batches, their digests and each window's digest."""
    batches = take(make_loader(dict(source=export, seed=5, batch_size=B, num_workers=2)))
    return {"batches": batches, "digests": [batch_digest(b) for b in batches], "windows": window_digests(batches)}


def run_child(jobs: list[dict[str, Any]], tmp_path: Path) -> list[dict[str, Any]]:
    jobs_path, out_path = tmp_path / "jobs.json", tmp_path / "out.json"
    jobs_path.write_text(json.dumps(jobs))
    proc = subprocess.run([sys.executable, str(HERE / "pipeline_child.py"), str(jobs_path), str(out_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out_path.read_text())


# ----------------------------------------------------------------------------------------------
# a webdataset pipeline, user stages in the workers


def tag_worker(sample: dict[str, Any]) -> dict[str, Any]:
    info = torch.utils.data.get_worker_info()
    sample["worker"] = torch.tensor(-1 if info is None else info.id)
    sample["pid"] = torch.tensor(os.getpid())
    return sample


def test_stream_is_a_webdataset_pipeline(export):
    stream = wdspq.ShardStream(export, seed=1)
    assert isinstance(stream, wds.DataPipeline) and isinstance(stream, wds.FluidInterface)
    assert isinstance(stream, torch.utils.data.IterableDataset)
    assert [type(s).__name__ for s in stream.pipeline] == ["CursorSource", "ReadRecords", "DecodeSamples"]
    composed = stream.map(tag_worker)
    assert composed is not stream and len(stream.pipeline) == 3 and len(composed.pipeline) == 4  # compose copies
    assert composed.user_stages == composed.pipeline[3:] and stream.user_stages == []


def test_user_stages_added_with_webdataset_api_run_in_the_workers(export, n_windows):
    plain = {int(s["window_index"]): s for s in wdspq.ShardStream(export, seed=1)}
    stream = (wdspq.ShardStream(export, seed=1)
              .map(tag_worker)
              .map_dict(actions=lambda a: a + 1)
              .rename(acts="actions")
              .compose(wds.filters.map(lambda s: {**s, "twice": s["observations"] * 2})))
    loader = wdspq.StreamLoader(stream, batch_size=B, num_workers=2)
    assert loader.dataset._ring is None  # samples changed by user stages are collated with default_collate
    batches = take(loader)
    workers = {int(w) for b in batches for w in b["worker"]}
    pids = {int(p) for b in batches for p in b["pid"]}
    assert workers == {0, 1} and os.getpid() not in pids and len(pids) == 2
    seen = []
    for b in batches:
        assert "__key__" not in b and "actions" not in b
        for i, w in enumerate(b["window_index"].tolist()):
            seen.append(w)
            assert torch.equal(b["acts"][i], plain[w]["actions"] + 1)
            assert torch.equal(b["twice"][i], plain[w]["observations"] * 2)
            assert torch.equal(b["frames"][i], plain[w]["frames"])
    assert sorted(seen) == list(range(n_windows))
    assert loader.state_dict()["complete"] and len(batches) == len(wdspq.StreamLoader(wdspq.ShardStream(export, seed=1), B, num_workers=2))


# ----------------------------------------------------------------------------------------------
# per-sample randomness


def test_rng_stage_gets_the_pure_per_sample_generator(export):
    stream = make_stream(dict(source=export, seed=5))
    stream.set_epoch(2)
    for s in list(stream)[:20]:
        w = int(s["window_index"])
        assert float(s["draw"]) == wdspq.sample_rng(5, 2, w, stage=1).random()  # the second rng stage
    g1 = wdspq.sample_rng(5, 2, 7)
    assert g1.random() == wdspq.sample_rng(5, 2, 7).random()
    draws = {wdspq.sample_rng(*args).random() for args in [(5, 2, 7), (6, 2, 7), (5, 3, 7), (5, 2, 8), (5, 2, -1),
                                                              (5, 2, 7, 1)]}
    assert len(draws) == 6


def test_torch_helpers_are_seeded_by_the_sample_generator():
    a = torch.rand(5, generator=wdspq.torch_generator(wdspq.sample_rng(1, 0, 3)))
    b = torch.rand(5, generator=wdspq.torch_generator(wdspq.sample_rng(1, 0, 3)))
    assert torch.equal(a, b) and not torch.equal(a, torch.rand(5, generator=wdspq.torch_generator(
        wdspq.sample_rng(1, 0, 4))))
    before = torch.random.get_rng_state()
    with wdspq.torch_seed(wdspq.sample_rng(1, 0, 3)):
        x = torch.rand(5)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global generator is restored
    with wdspq.torch_seed(wdspq.sample_rng(1, 0, 3)):
        assert torch.equal(torch.rand(5), x)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_augmented_values_per_window_are_the_same_for_0_1_2_workers(export, uninterrupted, n_windows):
    want = uninterrupted["windows"]
    assert len(want) == n_windows
    for workers in (0, 1):
        got = window_digests(take(make_loader(dict(source=export, seed=5, batch_size=B, num_workers=workers))))
        assert got == want, workers
    direct = make_stream(dict(source=export, seed=5))  # iterated directly, no loader
    assert window_digests([{k: v[None] for k, v in s.items()} for s in direct]) == want
    # the augmentation is really random: another epoch, and the plain stream, give other values
    other = make_loader(dict(source=export, seed=5, batch_size=B, num_workers=0))
    other.set_epoch(1)
    epoch1 = window_digests(take(other))
    assert sum(epoch1[w] != want[w] for w in want) == n_windows


@pytest.mark.parametrize("num_workers", [0, 2])
def test_augmented_exact_resume_in_a_fresh_process(export, uninterrupted, tmp_path, num_workers):
    """R3 with augmentation: stop at several points, save, resume in a fresh process: the rest of the
    batches equal the uninterrupted run's bit for bit (digests over every key)."""
    job = dict(source=export, seed=5, batch_size=B, num_workers=num_workers)
    if num_workers == 2:
        full = uninterrupted["digests"]
    else:
        full = [batch_digest(b) for b in take(make_loader(job))]
    stops = [1, len(full) // 3, len(full) // 2 + 1, len(full) - 1]
    jobs = []
    for t in stops:
        loader = make_loader(job)
        head = take(loader, t)
        assert [batch_digest(b) for b in head] == full[:t]
        path = tmp_path / f"state-{t}.json"
        path.write_text(json.dumps(loader.state_dict()))
        jobs.append({**job, "state": str(path)})
    for t, res in zip(stops, run_child(jobs, tmp_path)):
        assert full[:t] + res["batches"] == full, t
        assert res["state"]["complete"]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_augmented_elastic_resume_2_to_1_workers(export, uninterrupted, n_windows):
    loader = make_loader(dict(source=export, seed=5, batch_size=B, num_workers=2))
    head = take(loader, 17)
    state = json.loads(json.dumps(loader.state_dict()))
    resumed = make_loader(dict(source=export, seed=5, batch_size=5, num_workers=1))
    resumed.load_state_dict(state)
    rest = take(resumed)
    assert resumed.state_dict()["complete"]
    got = window_digests(head + rest)  # asserts every window once
    assert len(got) == n_windows and got == uninterrupted["windows"]


def test_augmented_elastic_resume_2_to_1_ranks(export, uninterrupted, n_windows):
    before, states = [], []
    for rank, stop in ((0, 9), (1, 4)):
        loader = make_loader(dict(source=export, seed=5, rank=rank, world_size=2, batch_size=B, num_workers=2))
        before += take(loader, stop)
        states.append(loader.state_dict())
    merged = json.loads(json.dumps(wdspq.merge_states(states)))
    resumed = make_loader(dict(source=export, seed=5, rank=0, world_size=1, batch_size=B, num_workers=2))
    resumed.load_state_dict(merged)
    after = take(resumed)
    assert resumed.state_dict()["complete"]
    got = window_digests(before + after)
    assert len(got) == n_windows and got == uninterrupted["windows"]


def test_stages_travel_to_spawned_workers(export, uninterrupted):
    """With the spawn start method the stream, its stages and their functions are pickled to the workers;
    the augmented batches are the same as with fork."""
    stream = make_stream(dict(source=export, seed=5))
    loader = wdspq.StreamLoader(stream, batch_size=B, num_workers=2, multiprocessing_context="spawn")
    assert [batch_digest(b) for b in take(loader, 4)] == uninterrupted["digests"][:4]


# ----------------------------------------------------------------------------------------------
# stages that break the count


def drop_one(src):
    for s in src:
        if int(s["window_index"]) != 100:
            yield s


def duplicate_one(src):
    for s in src:
        yield s
        if int(s["window_index"]) == 100:
            yield dict(s)


def swap_pairs(src):
    it = iter(src)
    for a in it:
        b = next(it, None)
        if b is not None:
            yield b
        yield a


def drop_last(src):
    prev = None
    for s in src:
        if prev is not None:
            yield prev
        prev = s


BAD_STAGES = {
    "map returning None": lambda s: s.map(lambda x: None if int(x["window_index"]) == 100 else x),
    "drops": lambda s: s.compose(drop_one),
    "duplicates": lambda s: s.compose(duplicate_one),
    "reorders": lambda s: s.compose(swap_pairs),
    "drops the last": lambda s: s.compose(drop_last),
    "drops with the handler": lambda s: s.map(lambda x: 1 / 0 if int(x["window_index"]) == 100 else x,
                                              handler=wds.warn_and_continue),
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", list(BAD_STAGES))
@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_stage_that_drops_adds_or_reorders_samples_is_a_clear_error(export, name, num_workers):
    stream = BAD_STAGES[name](wdspq.ShardStream(export, seed=1))
    loader = wdspq.StreamLoader(stream, batch_size=B, num_workers=num_workers)
    with pytest.raises(StageError, match="one sample in, one sample out"):
        take(loader)


def test_a_stage_that_loses_window_index_or_batches_is_a_clear_error(export):
    stream = wdspq.ShardStream(export, seed=1)
    with pytest.raises(StageError, match="without a 'window_index'"):
        list(stream.rename(acts="actions", keep=False))
    with pytest.raises(StageError, match="a stage that batches"):
        list(stream.compose(lambda src: (torch.utils.data.default_collate([s, s]) for s in src)))


UNSAFE = {
    "shuffle": lambda s: s.compose(wds.shuffle(100)),
    "detshuffle": lambda s: s.compose(wds.filters.detshuffle(10)),
    "select": lambda s: s.select(lambda x: True),
    "rsample": lambda s: s.rsample(0.5),
    "slice": lambda s: s.slice(10),
    "batched": lambda s: s.batched(4),
    "listed": lambda s: s.listed(4),
    "unbatched": lambda s: s.unbatched(),
    "to_tuple": lambda s: s.to_tuple("frames", "actions"),
    "split_by_worker": lambda s: s.compose(wds.split_by_worker),
    "mcached": lambda s: s.mcached(),
    "repeat": lambda s: s.repeat(2),
    "with_epoch": lambda s: s.with_epoch(100),
    "decode": lambda s: s.decode("rgb8"),
    "append": lambda s: s.append(wds.filters.batched(4)),
    "map_tuple": lambda s: s.map_tuple(lambda x: x),
    "resampled": lambda s: s.compose(wds.resampled),
    "resampled(n)": lambda s: s.compose(wds.resampled(10)),
    "with_length": lambda s: s.with_length(3),
    "shuffle()": lambda s: s.shuffle(10),
}


@pytest.mark.parametrize("name", list(UNSAFE))
def test_known_unsafe_webdataset_stages_are_refused_when_composed(export, name, n_windows):
    stream = wdspq.ShardStream(export, seed=1)
    with pytest.raises(StageError):
        UNSAFE[name](stream)
    assert len(stream.pipeline) == 3
    assert len(stream) == n_windows and type(stream) is wdspq.ShardStream


def test_stream_shuffle_reads_as_the_flag_and_calling_it_is_a_clear_error(export):
    """`stream.shuffle` is the constructor's flag (webdataset's `shuffle(bufsize)` is refused); the state
    keeps a JSON bool."""
    on, off = wdspq.ShardStream(export, seed=1), wdspq.ShardStream(export, shuffle=False)
    assert on.shuffle and not off.shuffle and on.shuffle == True and off.shuffle == False  # noqa: E712
    assert repr(on.shuffle) == "True"
    with pytest.raises(StageError, match="shuffle flag"):
        on.shuffle(10)
    loader = wdspq.StreamLoader(on, batch_size=4)
    assert loader.state_dict()["shuffle"] is True


# ----------------------------------------------------------------------------------------------
# the README's examples

ROOT = HERE.parent


def readme_block(marker: str) -> str:
    import re

    text = (ROOT / "README.md").read_text()
    return re.search(r"```python\n(" + re.escape(marker) + r".*?)```", text, re.S).group(1)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_readme_kornia_augmentation_example(export, tmp_path, monkeypatch):
    """The README's augmentation example, executed as written: kornia shifts and colour-jitters every
    camera frame, numpy noise on the states; the same per window with 0 and 2 workers and after a resume."""
    pytest.importorskip("kornia")
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "demo").symlink_to(export)
    monkeypatch.chdir(tmp_path)
    ns: dict[str, Any] = {}
    exec(compile(readme_block("# augmentation in the DataLoader workers"), "README.md", "exec"), ns)
    assert isinstance(ns["loader"], wdspq.StreamLoader) and ns["loader"].num_workers == 4
    stream = ns["stream"]
    plain = {int(s["window_index"]): s for s in wdspq.ShardStream(export, seed=0)}

    def windows(loader):
        out = {}
        for b in take(loader):
            for i, w in enumerate(b["window_index"].tolist()):
                out[w] = {k: b[k][i] for k in ("frames", "observations", "actions")}
        return out

    w2 = windows(wdspq.StreamLoader(stream, batch_size=16, num_workers=2))
    head_loader = wdspq.StreamLoader(stream, batch_size=16, num_workers=0)
    head = take(head_loader, 5)
    resumed = wdspq.StreamLoader(stream, batch_size=16, num_workers=0)
    resumed.load_state_dict(head_loader.state_dict())
    w0 = {}
    for b in head + take(resumed):
        for i, w in enumerate(b["window_index"].tolist()):
            w0[w] = {k: b[k][i] for k in ("frames", "observations", "actions")}
    assert sorted(w0) == sorted(w2) == sorted(plain)
    changed = 0
    for w, v in w2.items():
        for k in v:
            assert torch.equal(v[k], w0[w][k]), (w, k)
        assert v["frames"].dtype == torch.uint8 and v["frames"].shape == plain[w]["frames"].shape
        assert torch.equal(v["actions"], plain[w]["actions"])  # actions are not augmented
        changed += not torch.equal(v["frames"], plain[w]["frames"])
        assert not torch.equal(v["observations"], plain[w]["observations"])
    assert changed == len(w2)


def test_readme_same_stage_in_plain_webdataset_and_the_stream(export, tmp_path, monkeypatch):
    """The README's side-by-side: one user stage in a plain webdataset pipeline (with the README decoder)
    and in wdspq's stream gives the same values per window."""
    from test_shard_format import readme_decoder

    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "demo").symlink_to(export)
    monkeypatch.chdir(tmp_path)
    ns: dict[str, Any] = {"wdspq_decoder": readme_decoder()}
    exec(compile(readme_block("# one user stage, two pipelines"), "README.md", "exec"), ns)
    by_plain = {int(s["window_index"]): s for s in ns["plain"]}
    by_stream = {int(s["window_index"]): s for s in ns["stream"]}
    assert sorted(by_plain) == sorted(by_stream) == list(range(load_manifest(export).num_windows))
    for w, s in by_stream.items():
        p = by_plain[w]
        for k in ("frames", "observations", "actions"):
            assert np.array_equal(np.asarray(p[k]), s[k].numpy()), (w, k)
        assert s["frames"].shape[-1] < wdspq.ShardStream(export).manifest.sample_schema["frames"]["shape"][-1]


# ----------------------------------------------------------------------------------------------
# batch stages: stream.map_batch(f), applied by StreamLoader after the fused collate


def relabel(batch: dict[str, Any]) -> dict[str, Any]:
    """Drops window_index, renames a key, changes a dtype, adds a list: what to_lerobot does to a batch."""
    out = {("act" if k == "actions" else k): v for k, v in batch.items() if k != "window_index"}
    out["act"] = out["act"].to(torch.float64) * 2
    out["names"] = [f"w{int(w)}" for w in batch["window_index"]]
    return out


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return set(a) == set(b) and all(a[k] == b[k] if isinstance(b[k], list) else torch.equal(a[k], b[k]) for k in b)


def _copied(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("num_workers", [0, 2])
def test_batch_stage_equals_fn_of_the_plain_batches_and_resumes_exactly(export, num_workers):
    stream = wdspq.ShardStream(export, shuffle=True, seed=3)
    staged = stream.map_batch(relabel)
    assert staged.batch_stages == (relabel,) and stream.batch_stages == () and staged.user_stages == []
    plain = [relabel(_copied(b)) for b in wdspq.StreamLoader(stream, batch_size=B, num_workers=num_workers)]
    loader = wdspq.StreamLoader(staged, batch_size=B, num_workers=num_workers)
    if num_workers:
        assert loader.dataset._ring is not None  # the batch stage keeps the shared-memory ring
    got = [_copied(b) for b in loader]
    assert len(got) == len(plain) and all(_same(g, p) for g, p in zip(got, plain))
    # exact resume mid-epoch: the state counts the samples of each batch before the stage drops window_index
    first = wdspq.StreamLoader(staged, batch_size=B, num_workers=num_workers)
    it = iter(first)
    head = [_copied(next(it)) for _ in range(5)]
    state = first.state_dict()
    del it
    again = wdspq.StreamLoader(staged, batch_size=B, num_workers=num_workers)
    again.load_state_dict(state)
    rest = [_copied(b) for b in again]
    assert all(_same(g, p) for g, p in zip(head + rest, plain)) and len(head) + len(rest) == len(plain)


def test_batch_stage_after_the_per_sample_stages_and_with_a_collate_fn(export):
    stream = wdspq.ShardStream(export, seed=1)
    staged = stream.map_batch(relabel).map(tag_worker)  # batch stages run after every per-sample stage
    b = next(iter(wdspq.StreamLoader(staged, batch_size=B)))
    assert "worker" in b and "act" in b and "window_index" not in b
    listed = wdspq.StreamLoader(stream.map_batch(lambda xs: xs[:2]), batch_size=B, collate_fn=list)
    with pytest.raises(StageError, match=r"leading sizes \[2\].*batch of 8 samples.*keep the batch size"):
        next(iter(listed))


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_batch_stage_that_changes_the_batch_size_is_a_clear_error(export, num_workers):
    stream = wdspq.ShardStream(export, seed=1)
    halve = stream.map_batch(lambda b: {k: v[: len(v) // 2] for k, v in b.items()})
    loader = wdspq.StreamLoader(halve, batch_size=B, num_workers=num_workers)
    with pytest.raises(StageError, match=r"returned leading sizes \[4\] for a batch of 8 samples"):
        next(iter(loader))
    with pytest.raises(StageError, match="returned None"):
        next(iter(wdspq.StreamLoader(stream.map_batch(lambda b: None), batch_size=B)))
    with pytest.raises(StageError, match="iterate it with wdspq.StreamLoader"):
        next(iter(stream.map_batch(relabel)))
    with pytest.raises(StageError, match="a function of one batch"):
        stream.map_batch(3)
