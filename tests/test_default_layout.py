"""The default layout: shared frames where the encoding allows them (raw frames, zstd), per-sample otherwise;
a manifest without a layout entry (every export made before shared frames, and per-sample ones) stays per-sample."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

import wdspq
from wdspq.cli import main as cli_main
from wdspq.errors import WdspqError
from wdspq.shardfmt import DEFAULT_ENCODING, RAW, Encoding, load_manifest
from wdspq.stream import ShardStream
from wdspq.verify import verify_shards

SPEC_ARGS = ["--acts-length-sec", "0.5", "--obs-length-sec", "0.5", "--stride", "4"]
SPEC = wdspq.WindowSpec(acts_length_sec=0.5, obs_length_sec=0.5, stride=4)


def test_auto_resolves_to_shared_frames_only_for_raw_frames_with_zstd() -> None:
    assert Encoding().layout == DEFAULT_ENCODING.layout == "shared-frames" and Encoding().segment == 32
    assert Encoding(layout="auto", level=5).layout == "shared-frames"
    for enc in (Encoding(frames="png"), Encoding(frames="jpeg"), Encoding(frames="webp"), Encoding(compression="none"),
                RAW, Encoding(layout="per-sample")):
        assert enc.layout == "per-sample", enc
        assert "layout" not in enc.to_dict()  # per-sample manifests and configuration digests are unchanged
    with pytest.raises(WdspqError, match="needs frames='raw' and compression='zstd'"):
        Encoding(frames="png", layout="shared-frames")
    with pytest.raises(WdspqError, match="auto, per-sample, shared-frames"):
        Encoding(layout="shared")
    # a user's dict without a layout gets the default; a manifest's (or to_dict's) without one is per-sample
    assert Encoding.from_dict({"frames": "raw", "compression": "zstd"}).layout == "shared-frames"
    assert Encoding.from_manifest({"frames": "raw", "compression": "zstd", "level": 3}).layout == "per-sample"
    for enc in (DEFAULT_ENCODING, Encoding(layout="per-sample"), Encoding(frames="jpeg", quality=80)):
        assert Encoding.from_manifest(enc.to_dict()) == enc
    assert Encoding.from_manifest(RAW.to_dict()).layout == "per-sample"


def test_cli_default_export_is_shared_frames_and_image_codecs_or_no_compression_per_sample(
        small_table: str, tokenizer_path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = [small_table, "--tokenizer", tokenizer_path, *SPEC_ARGS, "--samples-per-shard", "60", "--no-progress"]
    assert cli_main(["export", base[0], str(tmp_path / "default"), *base[1:]]) == 0
    m = load_manifest(str(tmp_path / "default"))
    assert m.data["encoding"]["layout"] == "shared-frames" and m.data["encoding"]["segment"] == 32
    assert m.encoding == DEFAULT_ENCODING
    names = set()
    for s in range(len(m.shards)):
        with tarfile.open(tmp_path / "default" / m.shards[s]["name"]) as tf:
            names |= {n.split(".", 1)[1] for n in tf.getnames()}
    assert names == {"frames.npy.zst", "sample.npy.zst"}
    capsys.readouterr()
    for flags in (["--frame-codec", "png"], ["--compression", "none"], ["--layout", "per-sample"]):
        assert cli_main(["export", *base[:1], str(tmp_path / "dry"), *base[1:], *flags, "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert "frames shared" not in out, (flags, out)
    assert cli_main(["export", *base[:1], str(tmp_path / "dry"), *base[1:], "--dry-run"]) == 0
    assert "frames shared by segments of 32 windows" in capsys.readouterr().out
    assert cli_main(["export", *base[:1], str(tmp_path / "png"), *base[1:], "--frame-codec", "png"]) == 0
    enc = json.loads((tmp_path / "png" / "manifest.json").read_text())["encoding"]
    assert "layout" not in enc and load_manifest(str(tmp_path / "png")).encoding.layout == "per-sample"
    assert cli_main(["export", *base[:1], str(tmp_path / "bad"), *base[1:], "--frame-codec", "png",
                     "--layout", "shared-frames"]) == 2
    assert "needs frames='raw' and compression='zstd'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_export_help_says_what_auto_picks(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["export", "--help"]) == 0
    text = "".join(capsys.readouterr().out.split())  # help wraps lines, also after a hyphen
    assert "--layout{auto,per-sample,shared-frames}" in text
    assert "auto(default):shared-frameswith--frame-codecrawand--compressionzstd,per-sampleotherwise" in text


def test_a_manifest_without_a_layout_entry_is_read_as_per_sample(small_table: str, tokenizer_path: str,
                                                                  tmp_path: Path) -> None:
    """What every export made before shared frames looks like: no layout, one sample.npy.zst per sample."""
    out = tmp_path / "old"
    wdspq.export_shards(small_table, out, SPEC, tokenizer=tokenizer_path, samples_per_shard=60, progress=False,
                        encoding=Encoding(layout="per-sample"))
    raw = json.loads((out / "manifest.json").read_text())
    assert not {"layout", "segment", "pack_level", "shared_keys"} & set(raw["encoding"])
    m = load_manifest(str(out))
    assert m.encoding.layout == "per-sample" and m.index(0).shape[1] == 2
    assert type(m.codec()).__name__ == "SampleCodec"
    ds = wdspq.ParquetWindowDataset(small_table, SPEC, tokenizer=tokenizer_path)
    seen = 0
    for s in ShardStream(out, shuffle=False):
        want = ds[int(s["window_index"])]
        for k in want:
            assert np.array_equal(np.asarray(s[k]), np.asarray(want[k])), k
        seen += 1
    assert seen == len(ds)
    assert verify_shards(str(out), table=small_table, tokenizer=tokenizer_path).ok
    # re-running with the same per-sample encoding reuses it (its configuration digest is unchanged) ...
    rep: dict = {}
    wdspq.export_shards(small_table, out, SPEC, tokenizer=tokenizer_path, samples_per_shard=60, progress=False,
                        encoding={"layout": "per-sample"}, report=rep)
    assert rep["outcome"] == "complete"
    # ... and the new default is another configuration: refused without overwrite, naming the manifest
    with pytest.raises(WdspqError, match="manifest.json: the output already holds an export"):
        wdspq.export_shards(small_table, out, SPEC, tokenizer=tokenizer_path, samples_per_shard=60, progress=False)
