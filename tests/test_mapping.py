"""Local shards are read through private mappings (wdspq.shardfmt.layout.map_spans): samples view the
mapping without a copy, are writable without touching the file, stay valid while kept, live mappings
are capped (then samples are read), and WDSPQ_MMAP=0 reads as before with the same samples."""

from __future__ import annotations

import gc
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

import wdspq
import wdspq.shardfmt.layout as layout
from wdspq.build import build_synthetic
from wdspq.shardfmt import RAW, load_manifest, read_run

SPEC = wdspq.WindowSpec(acts_length_sec=0.5, obs_length_sec=0.3, video_frame_offsets=[-1, 0], stride=3)


@pytest.fixture(scope="module")
def raw_export(tmp_path_factory, tokenizer_path) -> Path:
    root = tmp_path_factory.mktemp("mapping")
    build_synthetic(root / "t.parquet", episodes=3, seconds=2.0, image_size=16, video_size=24, seed=7, progress=False)
    wdspq.export_shards(root / "t.parquet", root / "x", SPEC, tokenizer=tokenizer_path, samples_per_shard=20,
                        encoding=RAW, progress=False)
    return root / "x"


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.suffix == ".tar"}


def _all(m, shard: int) -> list[dict[str, np.ndarray]]:
    return list(read_run(m, shard, 0, m.shards[shard]["samples"]))


def test_samples_view_a_private_mapping_and_are_writable(raw_export):
    before = _digests(raw_export)
    m = load_manifest(str(raw_export))
    a = _all(m, 0)
    frames = a[0]["frames"]
    base = frames
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    assert "mmap" in repr(type(getattr(base, "obj", base))).lower()  # no copy: the mapping itself
    assert frames.flags.writeable
    keep = a[1]["actions"].copy()
    frames[...] = 7  # private: the file and a second read are untouched
    a[1]["actions"][...] = -1
    again = _all(load_manifest(str(raw_export)), 0)
    assert not np.all(again[0]["frames"] == 7) and np.array_equal(again[1]["actions"], keep)
    assert _digests(raw_export) == before


def test_kept_samples_stay_valid_and_equal_read_samples(raw_export, monkeypatch):
    m = load_manifest(str(raw_export))
    kept = [s for sh in range(len(m.shards)) for s in _all(m, sh)]
    gc.collect()
    monkeypatch.setenv("WDSPQ_MMAP", "0")
    read = [s for sh in range(len(m.shards)) for s in _all(load_manifest(str(raw_export)), sh)]
    assert len(kept) == len(read) == m.num_windows
    for x, y in zip(kept, read):
        assert all(np.array_equal(x[k], y[k]) for k in y)
        assert "mmap" not in repr(type(getattr(y["frames"].base, "obj", None))).lower()


def test_live_mappings_are_capped_then_samples_are_read(raw_export, monkeypatch):
    monkeypatch.setattr(layout, "MAP_BYTES", 1)  # one sample per mapping
    monkeypatch.setattr(layout, "MAX_LIVE_MAPS", layout._live_maps[0] + 5)
    m = load_manifest(str(raw_export))
    kept = _all(m, 0) + _all(m, 1)  # 40 samples kept: 5 mapped, the rest read into their own buffers
    assert layout._live_maps[0] <= layout.MAX_LIVE_MAPS
    monkeypatch.setenv("WDSPQ_MMAP", "0")
    ref = _all(load_manifest(str(raw_export)), 0) + _all(load_manifest(str(raw_export)), 1)
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(kept, ref) for k in y)
    n = layout._live_maps[0]
    del kept
    gc.collect()
    assert layout._live_maps[0] < n  # dropping the samples unmaps their blocks


def test_stream_with_and_without_mapping_is_identical(raw_export, monkeypatch):
    def epoch() -> list[dict[str, torch.Tensor]]:
        return list(wdspq.StreamLoader(wdspq.ShardStream(raw_export, seed=2), batch_size=4, num_workers=2))

    mapped = epoch()
    monkeypatch.setenv("WDSPQ_MMAP", "0")
    read = epoch()
    assert len(mapped) == len(read)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(mapped, read) for k in a)
