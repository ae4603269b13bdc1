"""The zstd tuning of the default encoding (wdspq.shardfmt.tuning): the delta filter is exact for every
float bit pattern and chosen only where it helps, the dictionary is kept only when it helps held-out
episodes, both are recorded in the manifest and read back, a damaged dictionary is named, exports made
before the tuning existed still read, and the CLI switches turn each off."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import webdataset as wds
from test_shard_format import readme_decoder

import wdspq
from wdspq.build import build_synthetic
from wdspq.cli import main as cli_main
from wdspq.errors import ShardError
from wdspq.shardfmt import Encoding, SampleCodec, load_manifest, read_run
from wdspq.shardfmt.delta import delta_decode, delta_encode
from wdspq.shardfmt.tuning import (
    DICTIONARY_NAME,
    choose_delta_keys,
    train_codec,
    train_dictionary,
)
from wdspq.verify import verify_shards

SPEC = wdspq.WindowSpec(acts_length_sec=0.5, obs_length_sec=0.3, video_frame_offsets=[-1, 0], stride=5)

PER_SAMPLE = Encoding(layout="per-sample")


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("tuning") / "t.parquet"
    build_synthetic(out, episodes=4, seconds=2.0, image_size=16, video_size=24, seed=5, progress=False)
    return str(out)


@pytest.fixture(scope="module")
def tuned(table, tokenizer_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned") / "x"  # per-sample: every key in the tuned record (shared frames
    # move frames and action/state rows to the packs; test_shared_frames)
    wdspq.export_shards(table, out, SPEC, tokenizer=tokenizer_path, samples_per_shard=30, progress=False,
                        encoding=PER_SAMPLE)
    return out


@pytest.mark.parametrize("dtype", ["<f4", "<f8"])
@pytest.mark.parametrize("shape", [(2,), (7, 3), (5, 2, 2)])
def test_delta_filter_is_exact_for_every_bit_pattern(dtype, shape):
    rng = np.random.default_rng(0)
    it = np.dtype(dtype).itemsize
    bits = rng.integers(0, 256, size=int(np.prod(shape)) * it, dtype=np.uint8)  # any pattern: NaNs, infs, -0.0
    a = bits.view(dtype).reshape(shape)
    planes = delta_encode(a)
    assert planes.shape == (it, a.size) and planes.dtype == np.uint8
    assert delta_decode(planes.copy(), np.dtype(dtype), shape).tobytes() == a.tobytes()


def test_delta_keys_are_chosen_only_where_they_help():
    t = np.linspace(0, 1, 64, dtype=np.float32)[:, None]
    rng = np.random.default_rng(1)
    schema = {"smooth": {"dtype": "float32", "shape": [64, 3]}, "noise": {"dtype": "float32", "shape": [64, 3]},
              "t0": {"dtype": "float64", "shape": []}, "ids": {"dtype": "int64", "shape": [4]}}
    samples = [{"smooth": np.sin(t * 3 + np.arange(3) + i).astype(np.float32),
                "noise": rng.standard_normal((64, 3)).astype(np.float32), "t0": np.float64(i),
                "ids": np.arange(4)} for i in range(8)]
    assert choose_delta_keys(schema, samples, 3) == ("smooth",)


def test_dictionary_is_kept_only_when_it_helps_held_out_records():
    rng = np.random.default_rng(2)
    shared = rng.integers(0, 256, 20000, dtype=np.uint8).tobytes()  # what every record shares
    records = [shared + rng.integers(0, 256, 300, dtype=np.uint8).tobytes() for _ in range(40)]
    d = train_dictionary(records[::2], records[1::2], 3)
    assert d is not None and len(d) <= 64 * 1024
    noise = [rng.integers(0, 256, 2000, dtype=np.uint8).tobytes() for _ in range(40)]  # nothing shared
    assert train_dictionary(noise[::2], noise[1::2], 3) is None
    assert train_dictionary(records[:1], records[1:2], 3) is None  # too little to train on


def test_dictionary_is_judged_on_other_episodes(monkeypatch):
    """Training and held-out records come from different episodes (windows of one episode overlap, so a
    dictionary judged on its own episodes would look better than it is); one episode: alternate windows."""
    import wdspq.shardfmt.tuning as tuning

    schema = {"x": {"dtype": "uint8", "shape": [64]}, "episode": {"dtype": "int64", "shape": []}}
    seen = []
    monkeypatch.setattr(tuning, "train_dictionary", lambda train, held, level, windows: seen.append((train, held)))

    def episodes_of(bodies):
        return {int(np.frombuffer(b[-8:], np.int64)[0]) for b in bodies}

    samples = [(e, {"x": np.full(64, e, np.uint8), "episode": np.int64(e)}) for e in (3, 5, 8, 9) for _ in range(4)]
    train_codec(schema, Encoding(), samples)
    train, held = seen[-1]
    assert episodes_of(train) == {3, 8} and episodes_of(held) == {5, 9} and len(train) == len(held) == 8
    train_codec(schema, Encoding(), [(7, {"x": np.full(64, i, np.uint8), "episode": np.int64(7)}) for i in range(6)])
    train, held = seen[-1]
    assert [b[-72] for b in train] == [0, 2, 4] and [b[-72] for b in held] == [1, 3, 5]


def test_default_export_records_its_tuning_and_reads_back(tuned, table, tokenizer_path):
    m = json.loads((tuned / "manifest.json").read_text())
    enc = m["encoding"]
    assert enc["delta"] is True and enc["dictionary"] is True
    assert "actions" in enc["delta_keys"] and "observations" in enc["delta_keys"]
    f = enc["dictionary_file"]
    assert f["name"] == DICTIONARY_NAME and (tuned / DICTIONARY_NAME).stat().st_size == f["bytes"]
    codec = load_manifest(str(tuned)).codec()
    assert codec.delta_keys == tuple(enc["delta_keys"]) and codec.dictionary is not None
    ds = wdspq.ParquetWindowDataset(table, SPEC, tokenizer=tokenizer_path)
    got = {int(s["window_index"]): s for sh in range(len(m["shards"]))
           for s in read_run(load_manifest(str(tuned)), sh, 0, m["shards"][sh]["samples"])}
    assert sorted(got) == list(range(len(ds)))
    for w in range(len(ds)):
        ref = ds.sample_numpy(w)
        for k, v in ref.items():
            assert got[w][k].dtype == v.dtype and np.array_equal(got[w][k], v, equal_nan=True), (w, k)
    # plain webdataset with the README's decoder (dictionary and delta keys from the manifest): the same
    urls = [str(tuned / sh["name"]) for sh in m["shards"]]
    decode = readme_decoder()(str(tuned))
    seen = 0
    for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode().map(decode):
        ref = ds.sample_numpy(int(s["window_index"]))
        assert all(np.array_equal(np.asarray(s[k]), ref[k]) and np.asarray(s[k]).dtype == ref[k].dtype for k in ref)
        seen += 1
    assert seen == len(ds)
    # a plain (untuned) zstd export of the same windows is larger
    plain = wdspq.export_shards(table, tuned.parent / "plain", SPEC, tokenizer=tokenizer_path, samples_per_shard=30,
                                progress=False, encoding=Encoding(delta=False, dictionary=False, layout="per-sample"))
    assert "dictionary_file" not in plain["encoding"] and plain["encoding"]["delta_keys"] == []
    assert not (tuned.parent / "plain" / DICTIONARY_NAME).exists()
    assert sum(s["bytes"] for s in m["shards"]) < sum(s["bytes"] for s in plain["shards"])


def test_damaged_or_missing_dictionary_is_named(tuned, table, tokenizer_path, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tuned, bad)
    d = bad / DICTIONARY_NAME
    d.write_bytes(d.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ShardError, match=r"samples\.zdict: dictionary checksum mismatch"):
        wdspq.ShardStream(bad)
    d.unlink()
    with pytest.raises(ShardError, match=r"samples\.zdict: cannot read the export's zstd dictionary"):
        wdspq.ShardStream(bad)
    report = verify_shards(str(bad))
    assert not report.ok and "samples.zdict: cannot read the export's zstd dictionary" in str(report.problems[0])
    assert cli_main(["verify", str(bad), "--no-progress"]) == 1  # a failed check, not bad input
    # a record compressed with a dictionary and read without it: named, with the hint
    codec = load_manifest(str(tuned)).codec()
    ds = wdspq.ParquetWindowDataset(table, SPEC, tokenizer=tokenizer_path)
    blob = codec.encode(ds.sample_numpy(0))[0][1]
    with pytest.raises(ShardError, match="not a zstd frame"):
        SampleCodec(codec.schema, codec.encoding, codec.delta_keys, None).record_from(blob, "x")


def test_manifest_from_before_the_tuning_still_reads(table, tokenizer_path, tmp_path):
    """A manifest written before `delta`/`dictionary` existed (plain zstd records) reads as plain zstd."""
    out = tmp_path / "old"
    wdspq.export_shards(table, out, SPEC, tokenizer=tokenizer_path, samples_per_shard=30, progress=False,
                        encoding=Encoding(delta=False, dictionary=False, layout="per-sample"))  # as they were
    m = json.loads((out / "manifest.json").read_text())
    for k in ("delta", "dictionary", "delta_keys"):
        m["encoding"].pop(k)
    (out / "manifest.json").write_text(json.dumps(m, indent=1, sort_keys=True))
    enc = load_manifest(str(out)).encoding
    assert (enc.delta, enc.dictionary) == (False, False)
    ds = wdspq.ParquetWindowDataset(table, SPEC, tokenizer=tokenizer_path)
    seen = 0
    for s in wdspq.ShardStream(out, seed=0):
        ref = ds[int(s["window_index"])]
        assert all(torch.equal(s[k], ref[k]) for k in ref)
        seen += 1
    assert seen == len(ds)
    assert verify_shards(str(out), table=table).ok


def test_cli_switches_turn_each_measure_off(table, tokenizer_path, tmp_path):
    base = ["export", table, "--acts-length-sec", "0.5", "--obs-length-sec", "0.3", "--frame-offsets=-1,0",
            "--stride", "5", "--tokenizer", tokenizer_path, "--no-progress", "--layout", "per-sample"]
    assert cli_main([*base[:2], str(tmp_path / "a"), *base[2:], "--no-dictionary"]) == 0
    a = json.loads((tmp_path / "a" / "manifest.json").read_text())["encoding"]
    assert a["dictionary"] is False and "dictionary_file" not in a and a["delta_keys"]
    assert cli_main([*base[:2], str(tmp_path / "b"), *base[2:], "--no-delta"]) == 0
    b = json.loads((tmp_path / "b" / "manifest.json").read_text())["encoding"]
    assert b["delta"] is False and b["delta_keys"] == [] and "dictionary_file" in b
