"""ParquetWindowDataset: DataLoader epochs, sequence indexing, pickling, decoded frames, bounded cache, tokens."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from wdspq.build.synthetic import read_frame_counter
from wdspq.table_dataset import ParquetWindowDataset
from wdspq.windows import WindowSpec

SPEC = WindowSpec(acts_length_sec=1.0, obs_length_sec=1.0, video_frame_offsets=[-2, -1, 0])
PICK_IDS = [101, 4060, 2039, 1996, 2417, 14291, 102]


@pytest.fixture(scope="module")
def ds(small_table, tokenizer_path) -> ParquetWindowDataset:
    return ParquetWindowDataset(small_table, SPEC, tokenizer=tokenizer_path)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def test_len_counts_windows_not_episodes(ds):
    assert ds.num_episodes == 6
    assert len(ds) == int(ds.n_actions.sum())  # stride 1, partial windows allowed: one window per action row
    assert len(ds) > 10 * ds.num_episodes


def test_dataloader_epoch_default_collation(ds):
    loader = DataLoader(ds, batch_size=16, num_workers=2, shuffle=True, generator=torch.Generator().manual_seed(0))
    seen = []
    A, O = ds.rspec.A, ds.rspec.signals["observations"].O  # noqa: E741
    for batch in loader:
        n = len(batch["window_index"])
        assert batch["actions"].shape == (n, A, 7) and batch["actions"].dtype == torch.float32
        assert batch["observations"].shape == (n, O, 12)
        assert batch["frames"].shape == (n, 3, 3, 32, 32) and batch["frames"].dtype == torch.uint8
        assert batch["image"].shape == (n, 3, 16, 16) and batch["input_ids"].shape == (n, 32)
        assert batch["t0"].dtype == torch.float64
        seen.extend(batch["window_index"].tolist())
    assert sorted(seen) == list(range(len(ds)))  # every window exactly once
    assert seen != sorted(seen)  # and shuffled


def test_indices_behave_like_a_sequence(ds):
    n = len(ds)
    assert _equal(ds[-1], ds[n - 1])
    assert _equal(ds[-n], ds[0])
    assert int(ds[-1]["window_index"]) == n - 1
    assert _equal(ds[np.int64(3)], ds[3]) and _equal(ds[torch.tensor(3)], ds[3])
    for bad in (n, n + 5, -n - 1):
        with pytest.raises(IndexError):
            ds[bad]
    for bad in ("1", 1.0, None):
        with pytest.raises(TypeError):
            ds[bad]


def test_pickle_round_trip(ds):
    before = [ds[i] for i in (0, 17, len(ds) // 2, len(ds) - 1)]  # populates the per-process state
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._local is None  # no file handles or caches travel
    fresh = [clone[i] for i in (0, 17, len(ds) // 2, len(ds) - 1)]
    assert all(_equal(a, b) for a, b in zip(before, fresh))


def _table_facts(path: str) -> list[dict]:
    t = pq.read_table(path, columns=["action_ts", "frames_ts"]).to_pylist()
    return [{"action_ts": np.asarray(r["action_ts"]), "video_t0": r["frames_ts"][0]} for r in t]


def test_frames_show_the_right_frame_counter(ds, small_table):
    facts = _table_facts(small_table)
    fps = ds.meta.stream("frames").rate_hz
    checked_before_clip = checked_in_clip = 0
    for e, f in enumerate(facts):
        n = len(f["action_ts"])
        first = int(ds.index.starts[e])
        for k in (0, 1, 2, n // 2, n - 1):  # first anchors (frames before the clip) ... last anchor
            s = ds[first + k]
            assert int(s["episode_index"]) == e and int(s["anchor_index"]) == k
            base = math.floor((f["action_ts"][k] - f["video_t0"]) * fps + 0.5)
            for slot, o in enumerate(SPEC.video_frame_offsets):
                if base + o < 0:
                    assert not bool(s["frames_mask"][slot]) and not s["frames"][slot].any()
                    checked_before_clip += 1
                else:
                    assert bool(s["frames_mask"][slot]), (e, k, o)
                    assert read_frame_counter(s["frames"][slot].numpy()) == base + o, (e, k, o)
                    checked_in_clip += 1
    assert checked_before_clip > 0 and checked_in_clip > 0


def test_tiny_cache_is_bounded_and_correct(ds, small_table, tokenizer_path):
    tiny = ParquetWindowDataset(small_table, SPEC, tokenizer=tokenizer_path, cache_bytes=1)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(ds))[:24]
    for i in order:
        assert _equal(tiny[int(i)], ds[int(i)])
    cache = tiny._proc()["cache"]
    assert cache.bytes == 0 and len(cache.items) == 0  # nothing fits in 1 byte (row groups included), yet every sample is right
    # a cache that holds about one decoded episode stays within its bound
    one_episode = ds._proc()["cache"].items[("episode", int(ds.index.locate(int(order[0]))[0]))][1]
    small = ParquetWindowDataset(small_table, SPEC, tokenizer=tokenizer_path, cache_bytes=int(one_episode * 1.5))
    for i in order:
        assert _equal(small[int(i)], ds[int(i)])
        c = small._proc()["cache"]
        assert c.bytes <= small.cache_bytes and sum(k[0] == "episode" for k in c.items) <= 1
    assert small._proc()["cache"].misses > 0


def test_tokens_equal_tokenizer_output(ds, small_table, tokenizer_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    texts = pq.read_table(small_table, columns=["text"]).column("text").to_pylist()
    assert "pick up the red cube" in texts
    for e, text in enumerate(texts):
        s = ds[int(ds.index.starts[e])]
        enc = tok(text, padding="max_length", truncation=True, max_length=32)
        assert s["input_ids"].tolist() == enc["input_ids"]
        assert s["attention_mask"].tolist() == enc["attention_mask"]
        if text == "pick up the red cube":
            assert s["input_ids"][:7].tolist() == PICK_IDS
            assert s["input_ids"][7:].eq(0).all() and s["attention_mask"].sum() == 7


def test_samples_are_fresh_cpu_tensors(ds):
    a, b = ds[5], ds[5]
    a["actions"].add_(1.0)  # writing into one sample must not change the cache or the next sample
    assert not torch.equal(a["actions"], b["actions"]) and _equal(ds[5], b)
    assert all(v.device.type == "cpu" for v in b.values())
