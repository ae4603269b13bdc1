"""TimeSeriesParquetDataset (the seed's constructor), to_device, and the resumable checkpointed sampler."""

from __future__ import annotations

import json
import os
from collections import namedtuple

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import wdspq
from wdspq.errors import SpecError, StateError
from wdspq.seed_compat import CheckpointSampler, TimeSeriesParquetDataset, to_device


@pytest.fixture(scope="module")
def seed_ds(small_table, tokenizer_path) -> TimeSeriesParquetDataset:
    return TimeSeriesParquetDataset(small_table, 1.0, 1.0, tokenizer=tokenizer_path)


def test_exports():
    assert wdspq.TimeSeriesParquetDataset is TimeSeriesParquetDataset and wdspq.to_device is to_device
    assert issubclass(wdspq.TimeSeriesParquetDataset, wdspq.ParquetWindowDataset)


def test_constructor_matches_reference(seed_ds, small_table, tokenizer_path):
    ref = wdspq.ParquetWindowDataset(small_table, wdspq.WindowSpec(1.0, 1.0), tokenizer=tokenizer_path)
    assert len(seed_ds) == len(ref) and seed_ds.spec == ref.spec
    for i in (0, 100, len(ref) - 1):
        a, b = seed_ds[i], ref[i]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_constructor_positional_seed_signature(small_table, tokenizer_path, tmp_path):
    ckpt = tmp_path / "pos.json"
    # parquet_file, acts_length_sec, obs_length_sec, sample_rate, video_frame_offsets, device, checkpoint_path
    ds = TimeSeriesParquetDataset(small_table, 0.5, 0.4, 25, [-1, 0], "cpu", str(ckpt), tokenizer=tokenizer_path)
    assert ds.spec.obs_resample == "linear" and ds.spec.obs_rate_hz == 25.0
    assert ds.rspec.signals["observations"].O == 10 and ds.rspec.A == 50
    assert ds.spec.video_frame_offsets == (-1, 0) and ds[0]["frames"].shape[0] == 2
    assert ds.device == "cpu" and ds.checkpoint_path == str(ckpt)
    # sample_rate with nearest, extra spec options, and conflicts
    ds = TimeSeriesParquetDataset(small_table, 0.5, 0.4, sample_rate=25, obs_resample="nearest", stride=5,
                                  tokenizer=tokenizer_path)
    assert ds.spec.obs_resample == "nearest" and ds.spec.stride == 5
    with pytest.raises(SpecError, match="obs_resample='none'"):
        TimeSeriesParquetDataset(small_table, 0.5, 0.4, sample_rate=25, obs_resample="none", tokenizer=tokenizer_path)
    with pytest.raises(SpecError, match="unknown options"):
        TimeSeriesParquetDataset(small_table, 0.5, 0.4, bogus=1, tokenizer=tokenizer_path)


def test_samples_stay_on_cpu_even_with_device(small_table, tokenizer_path):
    ds = TimeSeriesParquetDataset(small_table, 0.5, 0.5, device="cuda", tokenizer=tokenizer_path)
    assert all(v.device.type == "cpu" for v in ds[0].values())  # moving happens in the loop, not the worker


def test_to_device_cpu_nested():
    Pair = namedtuple("Pair", "x y")
    batch = {"a": torch.ones(2), "b": [torch.zeros(1), (torch.arange(3), "keep")], "c": Pair(torch.ones(1), 3), "n": 5}
    out = to_device(batch, "cpu")
    assert torch.equal(out["a"], batch["a"]) and out["a"].device.type == "cpu"
    assert isinstance(out["b"], list) and isinstance(out["b"][1], tuple) and out["b"][1][1] == "keep"
    assert isinstance(out["c"], Pair) and out["c"].y == 3 and out["n"] == 5
    auto = to_device({"a": torch.ones(2)})  # no device: CUDA, then MPS, then CPU
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if torch.backends.mps.is_available() else "cpu")
    assert auto["a"].device.type == expected


def _take(it, n: int) -> list[int]:
    return [next(it) for _ in range(n)]


def test_sampler_permutation_is_pure_and_covers_epoch():
    s = CheckpointSampler(50, shuffle=True, seed=3)
    e0 = list(s)
    assert sorted(e0) == list(range(50)) and e0 != list(range(50))
    assert s.epoch == 1 and s.index == 0
    torch.manual_seed(123), np.random.seed(123)  # global RNG state does not matter
    e1 = list(s)
    assert sorted(e1) == list(range(50)) and e1 != e0
    assert e0 == CheckpointSampler(50, seed=3).permutation(0).tolist()
    assert list(CheckpointSampler(7, shuffle=False)) == list(range(7))


def test_checkpoint_resume_continues_exactly(seed_ds, small_table, tokenizer_path, tmp_path):
    ckpt = tmp_path / "ckpt" / "sampler.json"
    n = len(seed_ds)
    uninterrupted = CheckpointSampler(n, shuffle=True, seed=11)
    full = list(uninterrupted) + list(uninterrupted)  # two epochs

    ds = TimeSeriesParquetDataset(small_table, 1.0, 1.0, checkpoint_path=ckpt, tokenizer=tokenizer_path)
    sampler = ds.sampler(shuffle=True, seed=11)
    it = iter(sampler)
    first = _take(it, 37)
    ds.save_checkpoint()
    saved = json.loads(ckpt.read_text())
    assert {k: saved[k] for k in ("epoch", "index", "seed")} == {"epoch": 0, "index": 37, "seed": 11}
    assert "permutation" not in json.dumps(saved) and len(json.dumps(saved)) < 1000  # recomputed, not stored

    # a fresh process: same constructor, the sampler restores the position and finishes epoch 0, then epoch 1
    ds2 = TimeSeriesParquetDataset(small_table, 1.0, 1.0, checkpoint_path=ckpt, tokenizer=tokenizer_path)
    s2 = ds2.sampler(shuffle=True, seed=11)
    assert (s2.epoch, s2.index, len(s2)) == (0, 37, n - 37)
    rest = list(s2)
    assert first + rest == full[:n]
    assert list(s2) == full[n:]

    # save mid-epoch-1 with an explicit consumed count (what a loop with prefetching workers should pass)
    it = iter(s2)
    _take(it, 20)
    s2.save_checkpoint(consumed=16)
    s3 = CheckpointSampler(n, shuffle=True, seed=11, checkpoint_path=ckpt, identity=s2.identity)
    assert (s3.epoch, s3.index) == (2, 16)
    assert list(s3) == CheckpointSampler(n, seed=11).permutation(2).tolist()[16:]


def test_checkpoint_resume_through_dataloader(seed_ds, tmp_path):
    ckpt = tmp_path / "dl.json"
    idx = list(range(40))
    sub = torch.utils.data.Subset(seed_ds, idx)  # any map dataset works with the sampler
    s = CheckpointSampler(len(sub), seed=5, checkpoint_path=ckpt)
    loader = DataLoader(sub, batch_size=8, sampler=s)
    ref = [b["window_index"].tolist() for b in DataLoader(sub, batch_size=8, sampler=CheckpointSampler(40, seed=5))]
    got = []
    for b, batch in enumerate(loader):
        got.append(batch["window_index"].tolist())
        if b == 1:
            s.save_checkpoint(consumed=(b + 1) * 8)
            break
    s_new = CheckpointSampler(len(sub), seed=5, checkpoint_path=ckpt)
    got += [b["window_index"].tolist() for b in DataLoader(sub, batch_size=8, sampler=s_new)]
    assert got == ref


def test_checkpoint_mismatch_fails_loudly(tmp_path):
    ckpt = tmp_path / "m.json"
    s = CheckpointSampler(10, seed=1, checkpoint_path=ckpt)
    next(iter(s))
    s.save_checkpoint()
    with pytest.raises(StateError, match="seed"):
        CheckpointSampler(10, seed=2, checkpoint_path=ckpt)
    with pytest.raises(StateError, match="num_windows"):
        CheckpointSampler(11, seed=1, checkpoint_path=ckpt)
    ckpt.write_text("{not json")
    with pytest.raises(StateError, match="cannot read"):
        CheckpointSampler(10, seed=1, checkpoint_path=ckpt)
    with pytest.raises(StateError, match="no checkpoint_path"):
        CheckpointSampler(10).save_checkpoint()


def test_save_checkpoint_needs_a_path_and_consumed_needs_a_sampler(seed_ds, tmp_path):
    with pytest.raises(StateError, match="without checkpoint_path"):
        seed_ds.save_checkpoint()
    with pytest.raises(StateError, match="sampler"):
        seed_ds.save_checkpoint(tmp_path / "c.json", consumed=3)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    ckpt = tmp_path / "a.json"
    s = CheckpointSampler(10, seed=1, checkpoint_path=ckpt)
    it = iter(s)
    _take(it, 3)
    s.save_checkpoint()
    good = ckpt.read_bytes()
    _take(it, 2)

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises((OSError, wdspq.WdspqError), match="disk full"):
        s.save_checkpoint()
    monkeypatch.undo()
    assert ckpt.read_bytes() == good  # the old checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no temporary file left behind
    assert CheckpointSampler(10, seed=1, checkpoint_path=ckpt).index == 3
    s.save_checkpoint()
    assert CheckpointSampler(10, seed=1, checkpoint_path=ckpt).index == 5


def test_dataset_pickles_without_sampler(seed_ds, tmp_path):
    import pickle

    ds = TimeSeriesParquetDataset.__new__(TimeSeriesParquetDataset)
    ds.__dict__.update(seed_ds.__dict__)
    ds.checkpoint_path = str(tmp_path / "p.json")
    ds.sampler()
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._sampler is None and clone.checkpoint_path == ds.checkpoint_path
    assert torch.equal(clone[3]["actions"], ds[3]["actions"])
