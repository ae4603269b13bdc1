"""Defects found by using wdspq, one test each (each failed before its fix): elastic resume in every even
mode, a checkpoint taken right after `iter()` at an epoch boundary, a partial explicit topology, the table
writer's bounded rate check, the export's tokenizer in its manifest and in verify, an interrupted export's
spill and re-run hint, one-line CLI errors, `info` of an export with `--version` and `--debug`, optional
`token_type_ids`, the seed importer's missing media, the seed's own training loop, `read_frame_counter`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import wdspq
from wdspq.build import build_synthetic
from wdspq.cli import main as cli_main
from wdspq.cursor import merge_states
from wdspq.errors import WdspqError

SPEC = wdspq.WindowSpec(acts_length_sec=0.1, obs_length_sec=0.1, video_frame_offsets=[0], stride=5, max_text_tokens=8)


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("defects")
    build_synthetic(d / "t.parquet", episodes=3, seconds=1.0, image_size=8, video_size=16, seed=1, progress=False)
    return d / "t.parquet"


@pytest.fixture(scope="module")
def export(table, tokenizer_path) -> Path:
    """59 windows in shards of 7: uneven shards, so drop and pad have work to do."""
    out = table.parent / "sh"
    wdspq.export_shards(table, out, SPEC, tokenizer=tokenizer_path, samples_per_shard=7, progress=False)
    return out


def _rank_loader(src, rank, world, even):
    return wdspq.StreamLoader(wdspq.ShardStream(src, seed=2, rank=rank, world_size=world, even=even), batch_size=4)


def _real(batches) -> list[int]:
    return [w for b in batches for w in b["window_index"].tolist() if w >= 0]


@pytest.mark.parametrize("even", ["drop", "pad", "none"])
@pytest.mark.parametrize("stop", [0, 2, None])  # batches per rank before the checkpoint; None: the whole epoch
def test_elastic_resume_never_delivers_more_in_any_even_mode(export, even, stop):
    n = wdspq.ShardStream(export).manifest.num_windows
    before, states = [], []
    for r in range(2):
        loader = _rank_loader(export, r, 2, even)
        it = iter(loader)
        got = [b for _, b in zip(range(stop), it)] if stop is not None else list(it)
        before += _real(got)
        states.append(loader.state_dict())
    merged = merge_states(states)
    one = _rank_loader(export, 0, 1, even)
    one.load_state_dict(merged)
    after = _real(list(one))
    assert len(set(before + after)) == len(before + after), "a delivered window came again"
    if stop is None:
        assert merged["complete"] and after == [], "a finished epoch resumed elastically delivered more"
    else:
        assert sorted(before + after) == list(range(n))
    nxt = _real(list(one))  # then the next epoch, whole
    assert sorted(nxt) == list(range(n))


def test_checkpoint_right_after_iter_at_an_epoch_boundary(export):
    a = wdspq.StreamLoader(wdspq.ShardStream(export, seed=0), batch_size=4)
    list(a)  # epoch 0
    it = iter(a)  # epoch 1 starts here
    state = a.state_dict()
    assert state["epoch"] == 1 and not state["complete"]
    b = wdspq.StreamLoader(wdspq.ShardStream(export, seed=0), batch_size=4)
    b.load_state_dict(json.loads(json.dumps(state)))
    want = [t["window_index"].tolist() for t in it]
    assert want and [t["window_index"].tolist() for t in b] == want


def test_partial_explicit_topology_is_an_error(export, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(WdspqError, match="rank=1 was given without world_size"):
        wdspq.ShardStream(export, rank=1)
    with pytest.raises(WdspqError, match="world_size=2 was given without rank"):
        wdspq.ShardStream(export, world_size=2)
    assert wdspq.ShardStream(export).rank == 0 and wdspq.ShardStream(export, rank=1, world_size=2).rank == 1


def test_table_writer_pools_bounded_timestamp_diffs(tmp_path, monkeypatch):
    import numpy as np

    from wdspq import table as schema
    from wdspq.table import rates

    monkeypatch.setattr(rates, "MAX_RATE_DIFFS", 1000)
    streams = [schema.actions_stream(2)]
    with schema.TableWriter(tmp_path / "t.parquet", streams) as w:
        for e in range(30):  # 30 x 200 diffs: 6,000 > 1,000
            ts = np.arange(201) / 50.0
            w.add(schema.Episode(f"e{e}", "go", ts, np.zeros((201, 2), np.float32)))
            assert sum(len(d) for d in w._rates["actions"].diffs) <= 1000
    meta = schema.read_meta(tmp_path / "t.parquet")
    assert meta.actions.rate_hz == 50.0


def test_manifest_records_the_requested_tokenizer_and_verify_reloads_it(export, table, tokenizer_path, tmp_path):
    from wdspq.shardfmt import load_manifest
    from wdspq.shardfmt.manifest import requested_tokenizer as _export_tokenizer
    from wdspq.verify import verify_shards

    m = load_manifest(str(export))
    assert m.data["tokenizer"]["requested"] == tokenizer_path
    assert _export_tokenizer(m) == tokenizer_path  # verify without --tokenizer loads the export's own
    assert verify_shards(str(export), table=str(table)).ok
    d = wdspq.export_shards(table, tmp_path / "dflt", SPEC, samples_per_shard=7, progress=False)
    assert d["tokenizer"]["requested"] == "default"  # no tokenizer given: the one library default
    assert _export_tokenizer(load_manifest(str(tmp_path / "dflt"))) is None


def test_spill_of_an_interrupted_other_configuration_is_removed_and_reuse_is_said(export, table, tokenizer_path,
                                                                                 tmp_path, capsys):
    out = tmp_path / "out"
    stale = out / ".wdspq-spill-0123456789abcdef"
    stale.mkdir(parents=True)
    (stale / "chunk-000000.bin").write_bytes(b"x" * 100_000)  # what a killed export of another config left
    wdspq.export_shards(table, out, SPEC, tokenizer=tokenizer_path, samples_per_shard=7, progress=False)
    assert not list(out.glob(".wdspq-spill-*")) and not list(out.glob(".*"))
    (out / "shard-000002.tar").unlink()  # damage one shard; the re-run repairs it and says what it reused
    capsys.readouterr()
    wdspq.export_shards(table, out, SPEC, tokenizer=tokenizer_path, samples_per_shard=7, progress=True)
    n = len(json.loads((out / "manifest.json").read_text())["shards"])
    assert f"reusing {n - 1} of {n} shards" in capsys.readouterr().err


def test_interrupted_export_says_to_rerun(monkeypatch, table, tmp_path, capsys):
    import wdspq.export as ex

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ex, "export_shards", interrupted)
    assert cli_main(["export", str(table), str(tmp_path / "o"), "--no-progress"]) == 130
    assert "re-run the same command to resume" in capsys.readouterr().err


def test_one_line_errors_name_the_flag_and_the_file(table, tmp_path, capsys):
    (tmp_path / "adir").mkdir()
    cases = [
        (["export", str(tmp_path / "adir"), str(tmp_path / "o")], "is a folder; expected a table file"),
        (["build", "synthetic", str(tmp_path / "adir"), "--episodes", "1"], "is a folder; give the path of the table"),
        (["export", str(table), str(tmp_path / "o"), "--obs-rate-hz", "10"], "--obs-rate-hz needs --obs-resample"),
        (["verify", str(tmp_path / "nope")], "no such export folder or manifest"),
    ]
    for argv, words in cases:
        capsys.readouterr()
        assert cli_main([*argv, "--no-progress"] if argv[0] != "verify" else argv) == 2, argv
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_info_of_an_export_version_and_debug_everywhere(export, capsys):
    assert cli_main(["info", str(export)]) == 0
    out = capsys.readouterr().out
    for word in ("spec", "windows", "shards", "bytes", "encoding", "tokenizer", "table", "59"):
        assert word in out, word
    assert cli_main(["--version"]) == 0
    assert capsys.readouterr().out.startswith(f"wdspq {wdspq.__version__}")
    for cmd in (["build", "synthetic"], ["build", "hdf5"], ["build", "seed"], ["export"], ["verify"], ["validate"],
                ["info"], ["demo"]):
        capsys.readouterr()
        assert cli_main([*cmd, "--help"]) == 0
        assert "--debug" in capsys.readouterr().out, cmd


def test_token_type_ids_only_when_the_tokenizer_makes_them(table, tokenizer_path):
    from wdspq.text import load_tokenizer

    bert = load_tokenizer(tokenizer_path)

    class NoTypeIds:  # a tokenizer whose output has no token_type_ids (like most non-BERT ones)
        def __call__(self, *a, **k):
            return bert(*a, return_token_type_ids=False, **k)

        def get_vocab(self):
            return bert.get_vocab()

    with_ids = wdspq.ParquetWindowDataset(table, SPEC, tokenizer=tokenizer_path)
    without = wdspq.ParquetWindowDataset(table, SPEC, tokenizer=NoTypeIds())
    assert "token_type_ids" in with_ids.sample_schema() and "token_type_ids" in with_ids[0]
    assert "token_type_ids" not in without.sample_schema() and "token_type_ids" not in without[0]
    assert set(with_ids[0]) - set(without[0]) == {"token_type_ids"}


def test_seed_import_of_missing_media_errors_or_skips(tmp_path, monkeypatch, tokenizer_path, capsys):
    from test_build import make_seed_table

    from wdspq.table.validate import validate_table

    seed = make_seed_table(tmp_path / "s", n=10)
    for i in (1, 4):
        (tmp_path / f"s/media/img_{i:03d}.png").unlink()
    (tmp_path / "s/media/vid_002.mp4").unlink()
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "t.parquet"
    assert cli_main(["build", "seed", str(seed["path"]), str(out), "--no-progress"]) == 2  # default: error
    assert "--missing-media skip" in capsys.readouterr().err and not out.exists()
    assert cli_main(["build", "seed", str(seed["path"]), str(out), "--missing-media", "skip", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "skipped 2 missing image file(s)" in err and "skipped 1 missing video file(s)" in err
    validate_table(out, full_media=True)
    ds = wdspq.ParquetWindowDataset(out, wdspq.WindowSpec(acts_length_sec=0.1, obs_length_sec=0.1),
                                    tokenizer=tokenizer_path)
    by_ep: dict[int, list] = {}
    for i in range(len(ds)):
        s = ds.sample_numpy(i)
        by_ep.setdefault(int(s["episode_index"]), []).append(s)
    assert all(not s["image_mask"] for e in (1, 4) for s in by_ep[e])
    assert all(s["image_mask"] for s in by_ep[0])
    assert all(not s["frames_mask"].any() for s in by_ep[2]) and any(s["frames_mask"].any() for s in by_ep[3])
    # every image missing: the table simply has no image stream
    for i in range(10):
        (tmp_path / f"s/media/img_{i:03d}.png").unlink(missing_ok=True)
    meta = wdspq.build.build_from_seed(seed["path"], tmp_path / "t2.parquet", progress=False, missing_media="skip")
    assert meta.images == [] and meta.extra["missing_media_skipped"]["image"] == 10


class _Explodes:
    """Unpickling this runs code (raises): a stand-in for the seed's pickle, which must never be loaded."""

    def __reduce__(self):
        return (_unpickled, ())


def _unpickled():
    raise AssertionError("the seed's pickle was unpickled")


def test_the_seed_loop_runs_with_only_the_import_changed(table, tmp_path, monkeypatch):
    """The seed's own `__main__` loop, line for line, with `from wdspq import TimeSeriesParquetDataset`."""
    import pickle

    from torch.utils.data import DataLoader

    from wdspq import TimeSeriesParquetDataset
    from wdspq.seed_compat import SeedPickleWarning

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    shutil.copy(table, tmp_path / "data" / "data_fromh5.pq")
    old = pickle.dumps({"dataloader_index": 3, "rng_state": _Explodes()})
    (tmp_path / "data" / "dataloader_ckpt.pkl").write_bytes(old)

    def seed_main() -> list[int]:
        parquet_file = Path("data/data_fromh5.pq")
        acts_length_sec = 0.1
        obs_length_sec = 0.1
        checkpoint_path = "data/dataloader_ckpt.pkl"
        dataset = TimeSeriesParquetDataset(parquet_file, acts_length_sec, obs_length_sec, checkpoint_path=checkpoint_path)
        dataloader = DataLoader(dataset, batch_size=32, shuffle=True)
        start_idx = dataset.get_dataloader_index() if dataset.get_dataloader_index() else 0
        seen = []
        for idx, batch in enumerate(dataloader, start=start_idx):
            dataset.set_dataloader_index(idx)
            seen.append(idx)  # (the seed prints the batch here)
            assert batch["actions"].shape[0] <= 32
            dataset.save_checkpoint()
        return seen

    with pytest.warns(SeedPickleWarning, match="does not load pickles"):
        first = seed_main()
    assert first[0] == 0 and len(first) >= 2
    assert (tmp_path / "data" / "dataloader_ckpt.pkl.seed.pkl").read_bytes() == old  # moved aside, not lost
    saved = json.loads((tmp_path / "data" / "dataloader_ckpt.pkl").read_text())
    assert saved["dataloader_index"] == first[-1]
    second = seed_main()  # a restart: the loop's numbering continues from the saved index
    assert second[0] == first[-1]


def test_read_frame_counter_takes_a_tensor(table, tokenizer_path):
    from wdspq.build.synthetic import read_frame_counter

    ds = wdspq.ParquetWindowDataset(table, SPEC, tokenizer=tokenizer_path)
    s = ds[5]
    assert read_frame_counter(s["frames"][0]) == read_frame_counter(s["frames"][0].numpy())
