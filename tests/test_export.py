"""Export: parity with the map-style dataset through plain webdataset, determinism, atomic restart after a
real SIGKILL, manifest contents, overwrite rules, S3 output, and `wdspq verify` on clean and corrupt shards."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from killing import kill_after_first_shard
from test_shard_format import readme_decoder

from wdspq import ParquetWindowDataset, WdspqError, WindowSpec, export_shards
from wdspq.cli import main as cli_main
from wdspq.export import SPILL_PREFIX, shard_assignment
from wdspq.shardfmt import Encoding, key_of
from wdspq.shardfmt.tuning import DICTIONARY_NAME
from wdspq.storage import open_storage
from wdspq.text import load_tokenizer, tokenizer_identity

SPEC = WindowSpec(acts_length_sec=0.5, obs_length_sec=0.5, obs_offset_sec=-0.1, video_frame_offsets=(-2, -1, 0), stride=4)
SPP = 40  # samples per shard: ~300 windows -> 8 shards


PER_SAMPLE = Encoding(layout="per-sample")  # this file pins the per-sample format (test_shared_frames: the default)


def export(table, out, tok, **kw):
    kw.setdefault("samples_per_shard", SPP)
    kw.setdefault("encoding", PER_SAMPLE)
    return export_shards(table, out, SPEC, tokenizer=tok, progress=False, **kw)


def plain_record(sample: dict, folder) -> dict:
    """The README's plain-webdataset decoder (no wdspq import) applied to one raw webdataset sample."""
    return readme_decoder()(str(folder))(sample)


def files_of(folder) -> dict[str, bytes]:
    """Every visible file of an export folder (shards and manifest) by name."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file() and not p.name.startswith(".")}


def shard_paths(folder) -> list[str]:
    m = json.loads((Path(folder) / "manifest.json").read_text())
    return [str(Path(folder) / s["name"]) for s in m["shards"]]


def verify_cli(capsys, *args) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = cli_main(["verify", *map(str, args), "--no-progress"])
    return rc, capsys.readouterr().out.strip().splitlines()


@pytest.fixture(scope="module")
def ds(small_table, tokenizer_path) -> ParquetWindowDataset:
    return ParquetWindowDataset(small_table, SPEC, tokenizer=tokenizer_path)


@pytest.fixture(scope="module")
def base(small_table, tokenizer_path, tmp_path_factory) -> Path:
    """The reference export: workers=1, seed 0."""
    out = tmp_path_factory.mktemp("export") / "base"
    export(small_table, out, tokenizer_path)
    return out


def test_fixture_size(ds, base):
    n = len(ds)
    assert 100 <= n <= 400
    assert len(shard_paths(base)) == -(-n // SPP) >= 3


def test_every_window_equals_map_style_via_plain_webdataset(ds, base):
    seen = set()
    for s in wds.WebDataset(shard_paths(base), shardshuffle=False, empty_check=False).decode():
        rec = plain_record(s, base)
        wi = int(rec["window_index"])
        assert s["__key__"] == key_of(wi)
        ref = ds[wi]
        assert set(rec) == set(ref)
        for k, v in ref.items():
            got = np.asarray(rec[k])
            want = v.numpy()
            assert got.dtype == want.dtype, (wi, k)
            assert got.shape == want.shape, (wi, k)
            assert np.array_equal(got, want), (wi, k)
        seen.add(wi)
    assert seen == set(range(len(ds)))


def test_workers_and_seed_determinism(small_table, tokenizer_path, base, tmp_path):
    export(small_table, tmp_path / "w2", tokenizer_path, workers=2)
    assert files_of(tmp_path / "w2") == files_of(base)  # same seed, second export, other worker count
    assert not any(p.name.startswith(SPILL_PREFIX) for p in (tmp_path / "w2").iterdir())  # spill removed

    export(small_table, tmp_path / "s1", tokenizer_path, seed=1, workers=2)
    other = files_of(tmp_path / "s1")
    assert other.keys() == files_of(base).keys()
    # every shard, index and the manifest differ; the dictionary is trained on the same probe windows
    assert all(other[k] != v for k, v in files_of(base).items() if k != DICTIONARY_NAME)

    m = export(small_table, tmp_path / "canon", tokenizer_path, shuffle=False)
    order = [int(s["window_index"]) for p in shard_paths(tmp_path / "canon")
             for s in (plain_record(r, tmp_path / "canon")
                       for r in wds.WebDataset(p, shardshuffle=False, empty_check=False).decode())]
    assert order == list(range(m["num_windows"]))


def test_manifest_contents(ds, base, tokenizer_path):
    m = json.loads((base / "manifest.json").read_text())
    assert (m["format"], m["version"]) == ("wdspq-shards", 2)
    assert m["encoding"]["frames"] == "raw" and m["encoding"]["compression"] == "zstd" and m["encoding"]["lossless"]
    assert m["spec"] == SPEC.to_dict()
    tid = tokenizer_identity(load_tokenizer(tokenizer_path))
    assert m["tokenizer"]["vocab_sha256"] == tid["vocab_sha256"]
    assert m["tokenizer"]["class"] == tid["class"] and m["tokenizer"]["vocab_size"] == tid["vocab_size"]
    assert m["sample_schema"] == [{"key": k, **v} for k, v in ds.sample_schema().items()]
    assert m["num_windows"] == len(ds) and m["samples_per_shard"] == SPP
    expect = shard_assignment(len(ds), SPP, 0, True)
    assert [s["name"] for s in m["shards"]] == [f"shard-{i:06d}.tar" for i in range(len(expect))]
    for s, wins in zip(m["shards"], expect):
        data = (base / s["name"]).read_bytes()
        assert s["samples"] == len(wins) and s["bytes"] == len(data)
        assert s["sha256"] == hashlib.sha256(data).hexdigest()
        assert "offsets" not in s
        index = (base / s["index"]["name"]).read_bytes()
        assert s["index"]["bytes"] == len(index) and s["index"]["sha256"] == hashlib.sha256(index).hexdigest()
        spans = np.load(base / s["index"]["name"])
        assert spans.shape == (len(wins), 2) and spans.dtype == np.int64
        for (off, length), w in zip(spans.tolist(), wins.tolist()):  # each offset is the sample's tar header
            ti = tarfile.TarInfo.frombuf(data[off : off + 512], "utf-8", "surrogateescape")
            assert ti.name == f"{key_of(w)}.sample.npy.zst" and ti.mtime == 0
            assert length == 512 + -(-ti.size // 512) * 512  # one member per sample (per-sample layout)
        end = int(spans[-1].sum())
        assert not any(data[end:]) and len(data) - end >= 1024  # after the last sample: the end-of-archive zeros
    # statistics over every row of the table (each row once), computed directly
    for feat in ("actions", "observations"):
        eps = [ds.episode(e) for e in range(ds.num_episodes)]
        rows = np.concatenate([e.actions if feat == "actions" else e.signals[feat][1] for e in eps]).astype(np.float64)
        st = m["stats"][feat]
        assert st["count"] == len(rows)
        np.testing.assert_allclose(st["mean"], rows.mean(0), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(st["std"], rows.std(0), rtol=1e-9, atol=1e-12)
        assert st["min"] == rows.min(0).tolist() and st["max"] == rows.max(0).tolist()


def test_argument_errors(small_table, tokenizer_path, tmp_path):
    for kw, word in [({"samples_per_shard": 0}, "samples_per_shard"), ({"samples_per_shard": "10"}, "samples_per_shard"),
                     ({"samples_per_shard": True}, "samples_per_shard"), ({"workers": 0}, "workers"), ({"seed": -1}, "seed")]:
        with pytest.raises(WdspqError, match=word):
            export(small_table, tmp_path / "x", tokenizer_path, **kw)
    with pytest.raises(WdspqError, match="does not exist"):
        export(tmp_path / "missing.parquet", tmp_path / "x", tokenizer_path)
    (tmp_path / "afile").write_text("")
    with pytest.raises(WdspqError, match="is a file"):
        export(small_table, tmp_path / "afile", tokenizer_path)


def test_existing_export_same_config_reused_other_config_refused(small_table, tokenizer_path, base, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(base, out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    export(small_table, out, tokenizer_path)  # same configuration: checked and returned as is
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    with pytest.raises(WdspqError, match=r"manifest\.json.*samples_per_shard.*overwrite"):
        export(small_table, out, tokenizer_path, samples_per_shard=100)
    assert files_of(out) == files_of(base)  # nothing damaged
    m = export(small_table, out, tokenizer_path, samples_per_shard=100, overwrite=True)
    names = sorted(p.name for p in out.iterdir())
    dictionary = [m["encoding"]["dictionary_file"]["name"]] if "dictionary_file" in m["encoding"] else []
    assert names == sorted(["manifest.json", *dictionary, *(s["name"] for s in m["shards"]),
                            *(s["index"]["name"] for s in m["shards"])])


def test_repairs_a_corrupt_shard_of_a_finished_export(small_table, tokenizer_path, base, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(base, out)
    victim = out / "shard-000001.tar"
    victim.write_bytes(victim.read_bytes()[:1000])
    export(small_table, out, tokenizer_path)
    assert files_of(out) == files_of(base)


CHILD = textwrap.dedent(
    """
    import sys, time
    from wdspq import WindowSpec, export_shards
    from wdspq.storage import LocalStorage
    real = LocalStorage.commit
    def slow_commit(self, staging, name):  # widen the window in which the kill can land
        time.sleep(0.15)
        real(self, staging, name)
    LocalStorage.commit = slow_commit
    spec = WindowSpec.from_dict({spec!r})
    export_shards(sys.argv[1], sys.argv[2], spec, tokenizer=sys.argv[3], samples_per_shard={spp}, workers=2,
                  progress=False, encoding={{"layout": "per-sample"}})
    """
)


def _check_final_shards(out: Path, n_windows: int) -> int:
    """Every file under a final shard name is a complete tar with the right sample count and journal sha."""
    journal = {}
    for j in out.glob(f"{SPILL_PREFIX}*/journal.jsonl"):
        for line in j.read_text().splitlines():
            try:
                e = json.loads(line)["entry"]
            except ValueError:
                continue
            journal[e["name"]] = e
    expect = shard_assignment(n_windows, SPP, 0, True)
    count = 0
    for p in sorted(out.glob("shard-*.tar")):
        i = int(p.name[6:12])
        with tarfile.open(p) as tf:
            names = tf.getnames()
        assert names == [f"{key_of(w)}.sample.npy.zst" for w in expect[i].tolist()], p
        assert (out / p.name.replace(".tar", ".idx.npy")).exists()  # a committed shard always has its index
        if p.name in journal:
            assert hashlib.sha256(p.read_bytes()).hexdigest() == journal[p.name]["sha256"]
        count += 1
    return count


@pytest.mark.slow
def test_sigkill_midway_then_rerun_is_identical(small_table, tokenizer_path, base, ds, tmp_path):
    out = tmp_path / "killed"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(spec=SPEC.to_dict(), spp=SPP))
    rc = kill_after_first_shard([sys.executable, str(script), small_table, str(out), tokenizer_path], out)
    assert rc == -signal.SIGKILL  # the export and its worker processes
    assert not (out / "manifest.json").exists()
    assert 1 <= _check_final_shards(out, len(ds)) < len(shard_paths(base))
    assert list(out.glob(f"{SPILL_PREFIX}*")), "the spill folder is kept for the re-run"
    export(small_table, out, tokenizer_path)
    assert files_of(out) == files_of(base)
    assert not list(out.glob(f"{SPILL_PREFIX}*")) and not list(out.glob(".*"))


def test_death_between_the_dictionary_and_the_manifest_then_rerun_is_identical(small_table, tokenizer_path, base,
                                                                                tmp_path, monkeypatch):
    """The dictionary is committed whole just before the manifest: an export that dies between the two leaves
    it (and no manifest), and the re-run completes byte-identical to an uninterrupted export."""
    from wdspq.storage.local import LocalStorage

    assert (base / DICTIONARY_NAME).exists(), "the fixture export must have a dictionary for this case"
    real = LocalStorage.put_bytes

    def die_at_the_manifest(self, name, data):
        if name == "manifest.json":
            raise KeyboardInterrupt  # stands for a kill: nothing after this line of the export runs
        return real(self, name, data)

    out = tmp_path / "cut"
    monkeypatch.setattr(LocalStorage, "put_bytes", die_at_the_manifest)
    with pytest.raises(KeyboardInterrupt):
        export(small_table, out, tokenizer_path)
    monkeypatch.undo()
    assert not (out / "manifest.json").exists()
    assert (out / DICTIONARY_NAME).read_bytes() == (base / DICTIONARY_NAME).read_bytes()
    export(small_table, out, tokenizer_path)
    assert files_of(out) == files_of(base)
    assert not list(out.glob(".*"))


# ---------------------------------------------------------------------------------------------------
# wdspq export / verify (CLI)


def test_cli_export_matches_library(small_table, tokenizer_path, base, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = cli_main(["export", small_table, str(out), "--acts-length-sec", "0.5", "--obs-length-sec", "0.5",
                   "--obs-offset-sec=-0.1", "--frame-offsets", "-2,-1,0", "--stride", "4", "--samples-per-shard",
                   str(SPP), "--tokenizer", tokenizer_path, "--workers", "2", "--no-progress", "--layout",
                   "per-sample"])
    assert rc == 0
    assert "windows/s" in capsys.readouterr().out
    assert files_of(out) == files_of(base)
    assert cli_main(["export", small_table, str(out), "--seed", "3", "--tokenizer", tokenizer_path]) == 2
    assert "overwrite" in capsys.readouterr().err


def test_verify_clean_and_parity(base, small_table, tokenizer_path, capsys):
    rc, lines = verify_cli(capsys, base)
    assert rc == 0 and lines[-1].startswith("verify OK") and len(lines) == 1
    rc, lines = verify_cli(capsys, base, "--table", small_table, "--tokenizer", tokenizer_path)
    assert rc == 0 and "0 differ" in lines[-1]
    rc, lines = verify_cli(capsys, base / "manifest.json", "--table", small_table, "--tokenizer", tokenizer_path,
                           "--sample", "25")
    assert rc == 0 and "25 windows compared" in lines[-1]


def test_verify_reports_parity_mismatch_by_window_and_key(base, tokenizer_path, tmp_path, capsys):
    from wdspq.build import build_synthetic

    other = tmp_path / "other.parquet"
    build_synthetic(other, episodes=6, seconds=2.0, image_size=16, video_size=32, seed=8, progress=False)
    rc, lines = verify_cli(capsys, base, "--table", other, "--tokenizer", tokenizer_path, "--sample", "20")
    assert rc == 1 and len(lines) == 2, lines  # another table: said once, not once per window
    assert "is not the table this export was made from" in lines[0] and lines[-1].startswith("verify FAILED")
    from wdspq.verify import _compare

    a = {"actions": np.zeros((2, 3), np.float32), "frames": np.zeros((1, 3, 2, 2), np.uint8)}
    b = {"actions": np.ones((2, 3), np.float32), "frames": np.full((1, 3, 2, 2), 7, np.uint8)}
    probs = [str(p) for p in _compare(a, b, 17, "shard-000003.tar", bound=5, frame_keys=("frames",))]
    assert probs == ["shard-000003.tar, window_index 17, key 'actions': values differ (6 of 6 elements)",
                     "shard-000003.tar, window_index 17, key 'frames': pixel error 7 exceeds the manifest's bound 5"]
    assert not _compare(a, {**a, "frames": a["frames"] + 5}, 17, "s", bound=5, frame_keys=("frames",))


@pytest.mark.parametrize("damage", ["flip", "truncate", "flip-header", "delete"])
def test_verify_names_a_corrupt_shard(base, tmp_path, capsys, damage):
    out = tmp_path / "bad"
    shutil.copytree(base, out)
    victim = out / "shard-000002.tar"
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[len(data) // 3] ^= 0x40
    elif damage == "flip-header":
        data[int(np.load(out / "shard-000002.idx.npy")[5, 0]) + 3] ^= 0x01
    elif damage == "truncate":
        data = data[: len(data) // 2]
    victim.write_bytes(bytes(data))
    if damage == "delete":
        victim.unlink()
    rc, lines = verify_cli(capsys, out)
    assert rc == 1
    assert lines[-1].startswith("verify FAILED")
    problems = lines[:-1]
    assert problems and all(ln.startswith("FAIL shard-000002.tar") for ln in problems), lines


def test_verify_bad_manifest(base, tmp_path, capsys):
    out = tmp_path / "bad"
    shutil.copytree(base, out)
    (out / "manifest.json").write_text("{not json")
    rc, lines = verify_cli(capsys, out)
    assert rc == 1 and "manifest" in lines[0]
    assert cli_main(["verify", str(out), "--table", str(tmp_path / "nope.parquet")]) == 2


# ---------------------------------------------------------------------------------------------------
# S3


def test_export_to_s3_same_bytes_and_verify(s3_bucket, small_table, tokenizer_path, base, capsys):
    m = export(small_table, s3_bucket, tokenizer_path, workers=2)
    st = open_storage(s3_bucket)
    local = files_of(base)
    assert sorted(st.list()) == sorted(local)  # no journal, staging or spill objects left
    for name, data in local.items():
        assert st.read_bytes(name) == data, name
    assert m["num_windows"] == json.loads(local["manifest.json"])["num_windows"]
    rc, lines = verify_cli(capsys, s3_bucket, "--table", small_table, "--tokenizer", tokenizer_path, "--sample", "10")
    assert rc == 0, lines
