"""`wdspq show` and `Normalize`: a window drawn from a 2-camera table and from its shards is the same PNG,
masked frames look different from real ones, episode and statistics pictures, and normalisation that
round-trips, keeps padded rows zero and uses statistics equal to numpy's over the table."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import wdspq
from wdspq.build import build_synthetic
from wdspq.cli import main as cli_main

SPEC = wdspq.WindowSpec(acts_length_sec=0.5, obs_length_sec=0.3, video_frame_offsets=[-3, -1, 0], stride=7)
SPEC_FLAGS = ["--acts-length-sec", "0.5", "--obs-length-sec", "0.3", "--frame-offsets=-3,-1,0", "--stride", "7"]


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("show") / "t.parquet"
    build_synthetic(out, episodes=3, seconds=2.0, image_size=16, video_size=32, cameras=["front", "wrist"],
                    camera_fps=[15, 30], frame_drop=0.1, force_hz=200, seed=5, progress=False)
    return str(out)


@pytest.fixture(scope="module")
def export(table, tokenizer_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("show-sh") / "sh"
    wdspq.export_shards(table, out, SPEC, tokenizer=tokenizer_path, samples_per_shard=16, progress=False)
    return out


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(open(path, "rb").read())).convert("RGB"))


def test_window_from_table_and_from_shards_is_the_same_picture(table, export, tokenizer_path, tmp_path, capsys):
    a, b = tmp_path / "table.png", tmp_path / "shards.png"
    assert cli_main(["show", table, "--window", "5", *SPEC_FLAGS, "--tokenizer", tokenizer_path, "-o", str(a)]) == 0
    assert cli_main(["show", str(export), "--window", "5", "-o", str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()
    img = _png(a)
    assert img.shape[0] > 400 and img.shape[1] > 300  # cameras, image and three plots fit
    assert cli_main(["show", str(export), "--window", "5", "-o", str(b)]) == 2  # never overwrites
    assert "--overwrite" in capsys.readouterr().err


def test_a_masked_frame_is_drawn_differently(table, tokenizer_path, tmp_path):
    from wdspq.viz import show_window, table_window

    sample, ctx = table_window(table, 0, SPEC, tokenizer_path)  # window 0: frames before the clip are masked
    assert not sample["front_mask"][0] and sample["front_mask"][-1]
    masked = _png(show_window(sample, tmp_path / "w.png", ctx)).astype(int)
    frames = sample["front"].copy()
    frames[0] = frames[-1]  # a real frame in the masked slot, drawn as real
    shown = {**sample, "front": frames, "front_mask": np.ones_like(sample["front_mask"])}
    real = _png(show_window(shown, tmp_path / "w2.png", ctx)).astype(int)
    ys, xs = np.nonzero(np.abs(masked - real).sum(axis=2) > 0)
    assert len(ys) and ys.max() < masked.shape[0] * 0.4  # only the camera part of the picture changed
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))

    def colour(img):  # mean spread between channels: 0 for grey
        p = img[box]
        return float(np.abs(p[..., 0] - p[..., 1]).mean() + np.abs(p[..., 1] - p[..., 2]).mean())

    assert colour(masked) < 0.5 * colour(real)  # the masked panel is hatched grey, the frame is not
    # the same sample without a context still draws (times in rows, frames by slot)
    assert show_window(sample, tmp_path / "bare.png").endswith("bare.png")


def test_episode_and_stats_pictures(table, export, tmp_path, capsys):
    ep, st = tmp_path / "ep.png", tmp_path / "st.png"
    assert cli_main(["show", table, "--episode", "1", "--stride", "7", "-o", str(ep)]) == 0
    assert cli_main(["show", str(export), "--stats", "-o", str(st)]) == 0
    assert _png(ep).shape[0] > 300 and _png(st).shape[0] > 200
    assert cli_main(["show", str(export), "--episode", "0", "-o", str(tmp_path / "x.png")]) == 2
    assert "needs the table" in capsys.readouterr().err


def test_missing_matplotlib_says_how_to_install(monkeypatch, table, tmp_path, capsys):
    import builtins

    real = builtins.__import__

    def no_mpl(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    assert cli_main(["show", table, "--window", "0", "-o", str(tmp_path / "w.png")]) == 2
    assert "pip install 'wdspq[viz]'" in capsys.readouterr().err


def test_stats_equal_numpy_over_the_table(table, export, tokenizer_path):
    import pyarrow.parquet as pq

    t = pq.read_table(table)
    ds = wdspq.ParquetWindowDataset(table, SPEC, tokenizer=tokenizer_path)
    from_table, from_export = ds.stats(), wdspq.ShardStream(export).stats()
    for name, width in (("actions", 7), ("observations", None), ("force", 6)):
        flat = np.array([row for ep in t.column(name).to_pylist() for row in ep], dtype=np.float32).astype(np.float64)
        assert width is None or flat.shape[1] == width
        for st in (from_table[name], from_export[name]):
            assert int(st["count"]) == len(flat)
            np.testing.assert_allclose(st["mean"].numpy(), flat.mean(0), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(st["std"].numpy(), flat.std(0), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(st["min"].numpy(), flat.min(0), rtol=1e-6)
            np.testing.assert_allclose(st["max"].numpy(), flat.max(0), rtol=1e-6)


@pytest.mark.parametrize("mode", ["mean_std", "min_max"])
def test_normalize_round_trips_and_keeps_padding_zero(export, mode):
    stream = wdspq.ShardStream(export, seed=0)
    norm = wdspq.Normalize(stream.stats(), mode=mode)
    batch = next(b for b in wdspq.StreamLoader(stream, batch_size=16) if not b["actions_mask"].all())
    out = norm(batch)
    assert out["front"] is batch["front"]  # other keys pass through
    for k in ("actions", "observations", "force"):
        mask = batch[f"{k}_mask"]
        assert torch.all(out[k][~mask] == 0)  # padded rows stay exactly zero
        back = norm.inverse(out)[k]
        torch.testing.assert_close(back[mask], batch[k][mask], rtol=1e-5, atol=1e-5)
        assert torch.all(back[~mask] == 0)
        assert not torch.equal(out[k][mask], batch[k][mask])  # it did change the real rows
        if mode == "min_max":
            assert out[k][mask].abs().max() <= 1.0 + 1e-5
    full = batch["actions_mask"].all(dim=1)
    assert full.any()  # a policy's predicted actions, in normalised units, back to the robot's
    torch.testing.assert_close(norm.inverse(out["actions"][full], "actions"), batch["actions"][full],
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(wdspq.WdspqError, match="no statistics"):
        wdspq.Normalize(stream.stats(), keys=["nope"])
    with pytest.raises(wdspq.WdspqError, match="mode"):
        wdspq.Normalize(stream.stats(), mode="zscore")


def test_manifest_stats_are_covered_by_their_checksum(export):
    m = json.loads((export / "manifest.json").read_text())
    assert set(m["stats"]) == {"actions", "observations", "force"} and len(m["stats_sha256"]) == 64
