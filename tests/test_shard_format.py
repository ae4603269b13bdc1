"""Shard format v2: every encoding exported, read by plain webdataset with the README's decoder, streamed
and verified against the map-style dataset (lossless: equal; JPEG: within the recorded bound); per-shard
indexes and an O(shards) manifest; determinism; dry run and the free-space refusal; version 1 exports
still stream; sample checks; corrupt compressed members and indexes are named."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

import wdspq
from wdspq.build import build_synthetic
from wdspq.cli import main as cli_main
from wdspq.errors import ShardError, WdspqError
from wdspq.shardfmt import RAW, Encoding, SampleCodec, load_manifest
from wdspq.verify import verify_shards

ROOT = Path(__file__).resolve().parents[1]
SPEC = wdspq.WindowSpec(acts_length_sec=0.5, obs_length_sec=0.3, video_frame_offsets=[-1, 0], stride=6)
SPP = 40
ENCODINGS = {
    "raw": RAW,
    "default": Encoding(),  # shared frames
    "per-sample": Encoding(layout="per-sample"),
    "zstd-plain": Encoding(delta=False, dictionary=False, layout="per-sample"),  # as exports made before the tuning
    "png": Encoding(frames="png"),
    "webp": Encoding(frames="webp", compression="none"),
    "jpeg444": Encoding(frames="jpeg", quality=90),
    "jpeg420": Encoding(frames="jpeg", quality=80, subsampling="420"),
}


def readme_decoder():
    """The plain-webdataset decoder the README gives, executed as written (it must not import wdspq)."""
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(# plain webdataset, no wdspq.*?)```", text, re.S).group(1)
    assert not re.search(r"(import|from) wdspq", code)
    ns: dict = {}
    exec(code, ns)
    return ns["wdspq_decoder"]


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> str:
    """Two cameras on their own clocks plus an image: 4 episodes of ~2 s, 24x24 frames."""
    out = tmp_path_factory.mktemp("v2") / "t.parquet"
    build_synthetic(out, episodes=4, seconds=2.0, image_size=16, video_size=24, cameras=["front", "wrist"],
                    camera_fps=[15, 30], frame_jitter=0.003, seed=3, progress=False)
    return str(out)


@pytest.fixture(scope="module")
def ds(table, tokenizer_path):
    return wdspq.ParquetWindowDataset(table, SPEC, tokenizer=tokenizer_path)


@pytest.fixture(scope="module")
def exports(table, tokenizer_path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("v2-exports")
    for name, enc in ENCODINGS.items():
        wdspq.export_shards(table, root / name, SPEC, tokenizer=tokenizer_path, samples_per_shard=SPP,
                            encoding=enc, progress=False)
    return {name: root / name for name in ENCODINGS}


def _close(got: np.ndarray, want: np.ndarray, key: str, lossless: bool, bound: int) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, key
    if lossless or want.dtype != np.uint8:
        assert np.array_equal(got, want), key
    else:
        err = int(np.abs(got.astype(np.int16) - want.astype(np.int16)).max(initial=0))
        assert err <= bound, (key, err, bound)


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_every_encoding_reads_plainly_streams_and_verifies(name, exports, ds, table):
    src = exports[name]
    enc = ENCODINGS[name]
    m = json.loads((src / "manifest.json").read_text())
    assert m["encoding"]["lossless"] == enc.lossless and Encoding.from_manifest(m["encoding"]).to_dict() == enc.to_dict()
    bound = m["encoding"]["max_abs_error"]
    assert (bound == 0) == enc.lossless and bound < 128
    decode = readme_decoder()(str(src))
    urls = [str(src / s["name"]) for s in m["shards"]]
    seen = set()
    for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8").map(decode):
        wi = int(s["window_index"])
        ref = ds.sample_numpy(wi)
        assert {k for k in s if not k.startswith("__")} == set(ref), wi  # webdataset's map keeps __key__
        for k in ref:
            _close(np.asarray(s[k]), ref[k], k, enc.lossless, bound)
        seen.add(wi)
    assert seen == set(range(len(ds)))
    # streamed, batched in workers: the same samples
    got = {}
    for b in wdspq.StreamLoader(wdspq.ShardStream(src, seed=1), batch_size=7, num_workers=2):
        for i, wi in enumerate(b["window_index"].tolist()):
            if wi >= 0:
                got[wi] = {k: v[i] for k, v in b.items()}
    assert sorted(got) == list(range(len(ds)))
    for wi in (0, len(ds) // 2, len(ds) - 1):
        ref = ds[wi]
        for k in ref:
            _close(got[wi][k].numpy(), ref[k].numpy(), k, enc.lossless, bound)
            if enc.lossless:
                assert torch.equal(got[wi][k], ref[k]), k
    report = verify_shards(str(src), table=table)
    assert report.ok and report.parity_checked == len(ds), report.problems[:3]


def test_jpeg_bound_is_measured_and_checked(exports, table, tmp_path):
    m = json.loads((exports["jpeg420"] / "manifest.json").read_text())
    assert m["encoding"]["max_abs_error"] > 0  # 4:2:0 on coloured edges is lossy
    low = tmp_path / "low"
    shutil.copytree(exports["jpeg420"], low)
    m["encoding"]["max_abs_error"] = 1  # claim a bound the frames do not keep
    (low / "manifest.json").write_text(json.dumps(m, indent=1, sort_keys=True))
    report = verify_shards(str(low), table=table, sample=20)
    assert not report.ok and any("exceeds the manifest's bound 1" in str(p) for p in report.problems)


@pytest.mark.parametrize("layout, columns", [("per-sample", 2), ("shared-frames", 4)])
def test_manifest_holds_no_per_sample_data(table, tokenizer_path, tmp_path, layout, columns):
    spec = wdspq.WindowSpec(acts_length_sec=0.5, obs_length_sec=0.3, video_frame_offsets=[0], stride=1)
    m = wdspq.export_shards(table, tmp_path / "dense", spec, tokenizer=tokenizer_path, samples_per_shard=400,
                            progress=False, encoding=Encoding(layout=layout))
    n, shards = m["num_windows"], len(m["shards"])
    assert n > 500 and shards <= 3

    def lists(x):
        if isinstance(x, list):
            yield x
            for v in x:
                yield from lists(v)
        elif isinstance(x, dict):
            for v in x.values():
                yield from lists(v)

    longest = max(len(v) for v in lists(m))
    assert longest < n / 10, longest  # schema, stats and shard lists only: nothing per window
    assert all("offsets" not in s for s in m["shards"])
    # per-sample offsets are in the index sidecars, one (offset, length) row per sample (shared frames: and
    # its pack's (offset, length))
    st = wdspq.storage.open_storage(str(tmp_path / "dense"))
    for s in m["shards"]:
        data = st.read_bytes(s["index"]["name"])
        assert hashlib.sha256(data).hexdigest() == s["index"]["sha256"]
        assert np.load(tmp_path / "dense" / s["index"]["name"]).shape == (s["samples"], columns)


def test_stream_reads_only_the_indexes_of_its_shards(exports, monkeypatch):
    from wdspq.storage import LocalStorage

    reads: list[str] = []
    real = LocalStorage.read_bytes
    monkeypatch.setattr(LocalStorage, "read_bytes", lambda self, name: reads.append(name) or real(self, name))
    stream = wdspq.ShardStream(exports["default"], seed=0, rank=0, world_size=2, even="drop")
    # opening the stream parses the manifest and reads the export's dictionary if it has one, no index
    dictionary = stream.manifest.data["encoding"].get("dictionary_file")
    assert reads == ["manifest.json", *([dictionary["name"]] if dictionary else [])]
    n = sum(1 for _ in stream)
    indexes = [r for r in reads if r.endswith(".idx.npy")]
    total = len(stream.manifest.shards)
    assert n > 0 and 0 < len(indexes) < total and len(set(indexes)) == len(indexes)


@pytest.mark.parametrize("name", ["png", "jpeg444"])
def test_image_encodings_are_byte_identical_for_1_and_2_workers(name, table, tokenizer_path, exports, tmp_path):
    wdspq.export_shards(table, tmp_path / "w2", SPEC, tokenizer=tokenizer_path, samples_per_shard=SPP,
                        encoding=ENCODINGS[name], workers=2, progress=False)
    a = {p.name: p.read_bytes() for p in exports[name].iterdir() if p.is_file()}
    b = {p.name: p.read_bytes() for p in (tmp_path / "w2").iterdir() if p.is_file()}
    assert a == b


def test_default_encoding_is_much_smaller_than_raw(exports):
    size = {k: sum(s["bytes"] for s in json.loads((exports[k] / "manifest.json").read_text())["shards"])
            for k in ("raw", "default")}
    assert size["default"] * 3 < size["raw"]


def test_dry_run_estimates_and_writes_nothing(table, tokenizer_path, exports, tmp_path, capsys):
    est = wdspq.export_shards(table, tmp_path / "dry", SPEC, tokenizer=tokenizer_path, samples_per_shard=SPP,
                              dry_run=True, progress=False)
    assert not (tmp_path / "dry").exists()
    m = json.loads((exports["default"] / "manifest.json").read_text())
    actual = sum(s["bytes"] for s in m["shards"]) + m["encoding"].get("dictionary_file", {}).get("bytes", 0)
    assert est["windows"] == json.loads((exports["default"] / "manifest.json").read_text())["num_windows"]
    assert 0.75 < est["total_bytes"] / actual < 1.33
    assert est["amplification"] > 0 and est["peak_scratch_bytes"] > 0
    assert all(d["free"] > 0 for d in est["disks"])
    rc = cli_main(["export", table, str(tmp_path / "dry"), "--acts-length-sec", "0.5", "--dry-run",
                   "--tokenizer", tokenizer_path, "--frame-codec", "png", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and not (tmp_path / "dry").exists()
    for word in ("windows", "bytes/sample", "amplification", "peak scratch", "free", "PNG frames"):
        assert word in out, word


def test_export_refuses_when_the_disk_is_too_small(table, tokenizer_path, tmp_path, monkeypatch, capsys):
    import wdspq.export.plan as plan

    monkeypatch.setattr(plan, "free_bytes", lambda path: 10_000)
    with pytest.raises(WdspqError, match=r"not enough space: .*needs about .* only 0.0 MiB is free.*--force"):
        wdspq.export_shards(table, tmp_path / "x", SPEC, tokenizer=tokenizer_path, progress=False)
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
    assert cli_main(["export", table, str(tmp_path / "x"), "--tokenizer", tokenizer_path, "--no-progress"]) == 2
    assert "not enough space" in capsys.readouterr().err
    m = wdspq.export_shards(table, tmp_path / "x", SPEC, tokenizer=tokenizer_path, progress=False, force=True)
    assert m["num_windows"] > 0


def _as_version1(src: Path, dst: Path) -> None:
    """Rewrite a raw v2 export in the version 1 layout: the same tars, offsets inline, no index sidecars."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    man = load_manifest(str(src))
    for i, s in enumerate(m["shards"]):
        s["offsets"] = man.offsets(i).tolist()
        (dst / s.pop("index")["name"]).unlink()
    m["version"] = 1
    m["export_config"]["format"] = 1  # as the version 1 exporter recorded it
    m["export_config"].pop("encoding")
    m["export_config_digest"] = hashlib.sha256(json.dumps(m["export_config"], sort_keys=True).encode()).hexdigest()[:16]
    for k in ("encoding", "stats_sha256"):
        m.pop(k)
    (dst / "manifest.json").write_text(json.dumps(m, indent=1, sort_keys=True))


def test_version1_export_still_streams(exports, tmp_path, table, tokenizer_path):
    v1 = tmp_path / "v1"
    _as_version1(exports["raw"], v1)

    def epoch(src):
        return [b for b in wdspq.StreamLoader(wdspq.ShardStream(src, seed=4), batch_size=5, num_workers=2)]

    a, b = epoch(exports["raw"]), epoch(v1)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert verify_shards(str(v1)).ok
    with pytest.raises(WdspqError, match="overwrite"):  # exporting over it: another format, refused
        wdspq.export_shards(table, v1, SPEC, tokenizer=tokenizer_path, samples_per_shard=SPP, encoding=RAW,
                            progress=False)


def test_sample_codec_checks_dtype_and_shape():
    schema = {"frames": {"dtype": "uint8", "shape": [3, 2, 2]}, "window_index": {"dtype": "int64", "shape": []}}
    codec = SampleCodec(schema)
    good = {"frames": np.zeros((3, 2, 2), np.uint8), "window_index": np.int64(4)}
    assert codec.encode(good)
    with pytest.raises(ShardError, match=r"'frames' has shape \(1, 2, 2\), the schema says \(3, 2, 2\)"):
        codec.encode({**good, "frames": np.zeros((1, 2, 2), np.uint8)})  # would broadcast silently
    with pytest.raises(ShardError, match="'frames' has dtype float64, the schema says uint8"):
        codec.encode({**good, "frames": np.full((3, 2, 2), 7.9)})  # would be cast to 7 silently
    with pytest.raises(ShardError, match="missing"):
        codec.encode({"frames": good["frames"]})


def test_corrupt_zstd_member_and_index_are_named(exports, tmp_path):
    src = tmp_path / "bad"
    shutil.copytree(exports["per-sample"], src)  # sample 3's own member (test_shared_frames: a damaged pack)
    m = load_manifest(str(src))
    off = int(m.index(1)[3, 0])
    path = src / m.shards[1]["name"]
    data = bytearray(path.read_bytes())
    data[off + 512 + 40] ^= 0xFF  # inside sample 3's compressed record
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"shard-000001\.tar, sample 3, member 'sample\.npy\.zst'"):
        list(wdspq.shardfmt.read_run(load_manifest(str(src)), 1, 0, 8))
    skipping = wdspq.ShardStream(src, seed=0, on_error="skip")
    with pytest.warns(wdspq.stream.reader.SkippedSamplesWarning):
        got = [int(s["window_index"]) for s in skipping]
    assert got.count(-1) == 1 and len(got) == m.num_windows
    ix = src / m.shards[2]["index"]["name"]
    ix.write_bytes(ix.read_bytes()[:-8] + bytes(8))
    with pytest.raises(ShardError, match=r"shard-000002\.idx\.npy: index checksum mismatch"):
        load_manifest(str(src)).index(2)
    report = verify_shards(str(src))
    assert any("shard-000002" in str(p) and "index checksum mismatch" in str(p) for p in report.problems)


def test_tampered_stats_are_refused(exports, tmp_path):
    src = tmp_path / "stats"
    shutil.copytree(exports["raw"], src)
    m = json.loads((src / "manifest.json").read_text())
    m["stats"]["actions"]["mean"][0] += 1.0
    (src / "manifest.json").write_text(json.dumps(m, indent=1, sort_keys=True))
    with pytest.raises(ShardError, match="normalisation statistics do not match their sha256"):
        load_manifest(str(src))
