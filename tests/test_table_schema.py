"""Table schema version 2: named cameras and signals on their own clocks, v1 compatibility, determinism."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from v1_table import SPEC as V1_SPEC
from v1_table import sample_digest, write_v1_table

import wdspq
from wdspq.build import build_from_hdf5, build_synthetic
from wdspq.build.synthetic import SyntheticConfig, camera_times, read_frame_counter
from wdspq.errors import SchemaError
from wdspq.table import read_meta
from wdspq.table.validate import validate_table

HERE = Path(__file__).resolve().parent
CAMS, FPS = ("front", "wrist"), (15.0, 30.0)
SPEC2 = wdspq.WindowSpec(acts_length_sec=0.5, obs_length_sec=0.2, video_frame_offsets=[-1, 0, 2], stride=3)


@pytest.fixture(scope="module")
def multi_table(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("v2") / "multi.parquet"
    build_synthetic(out, episodes=5, seconds=2.0, image_size=8, video_size=16, seed=3, cameras=CAMS, camera_fps=FPS,
                    frame_jitter=0.01, frame_drop=0.05, force_hz=250, progress=False)
    return str(out)


def _expected_base(ts: np.ndarray, t0: float, rate: float) -> int:
    """Nearest frame by time (ties later), continued at the camera rate outside the clip: an independent oracle."""
    if t0 < ts[0]:
        return math.floor((t0 - ts[0]) * rate + 0.5)
    if t0 > ts[-1]:
        return len(ts) - 1 + math.floor((t0 - ts[-1]) * rate + 0.5)
    d = np.abs(ts - t0)
    return int(np.flatnonzero(d == d.min())[-1])


def test_multi_camera_table_metadata_and_validation(multi_table):
    meta = validate_table(multi_table, full_media=True)
    assert [(s.name, s.kind) for s in meta.streams] == [
        ("actions", "actions"), ("observations", "signal"), ("force", "signal"), ("front", "camera"),
        ("wrist", "camera"), ("image", "image")]
    assert meta.stream("force").rate_hz == 250.0 and meta.actions.rate_hz == 100.0
    raw = pq.read_schema(multi_table).metadata[b"wdspq"]  # in the Arrow schema, not only in the footer
    assert json.loads(raw)["format_version"] == 2
    t = pq.read_table(multi_table, columns=["front_ts", "wrist_ts"])
    for cam, fps in zip(CAMS, FPS):
        gaps = [np.diff(ts) * fps for ts in t.column(f"{cam}_ts").to_pylist()]
        assert all((g > 0).all() for g in gaps)  # strictly increasing
        assert any((g > 1.5).any() for g in gaps)  # with dropped frames


def test_every_window_streams_equal_to_map_style_and_shows_the_nearest_frame(multi_table, tmp_path, tokenizer_path):
    ds = wdspq.ParquetWindowDataset(multi_table, SPEC2, tokenizer=tokenizer_path)
    wdspq.export_shards(multi_table, tmp_path / "sh", SPEC2, tokenizer=tokenizer_path, samples_per_shard=40,
                        progress=False)
    cfg = SyntheticConfig(seed=3, seconds=2.0, image_size=8, video_size=16, cameras=CAMS, camera_fps=FPS,
                          frame_jitter=0.01, frame_drop=0.05, force_hz=250)
    numbers = {}  # (episode, camera) -> (camera frame numbers, times) recorded in the table
    table = pq.read_table(multi_table)
    for e in range(ds.num_episodes):
        a_ts = np.asarray(table.column("action_ts")[e].as_py())
        for c, cam in enumerate(CAMS):
            nums, ts = camera_times(cfg, e, c, float(a_ts[0]), float(a_ts[-1]))
            np.testing.assert_array_equal(ts, table.column(f"{cam}_ts")[e].as_py())
            numbers[e, cam] = (nums, ts)
    seen, frames_checked = 0, 0
    for s in wdspq.ShardStream(tmp_path / "sh", shuffle=True, seed=1):
        i = int(s["window_index"])
        ref = ds[i]
        assert set(s) == set(ref)
        for k in ref:
            assert np.array_equal(np.asarray(s[k]), ref[k].numpy()), (i, k)
        e, t0 = int(s["episode_index"]), float(s["t0"])
        for cam in CAMS:
            nums, ts = numbers[e, cam]
            base = _expected_base(ts, t0, ds.meta.stream(cam).rate_hz)
            for slot, o in enumerate(SPEC2.video_frame_offsets):
                j = base + o
                inside = 0 <= j < len(ts)
                assert bool(s[f"{cam}_mask"][slot]) == inside, (i, cam, slot)
                if inside:
                    assert read_frame_counter(s[cam][slot]) == nums[j], (i, cam, slot)
                    assert float(s[f"{cam}_ts"][slot]) == ts[j]
                    frames_checked += 1
        seen += 1
    assert seen == len(ds) and frames_checked > 2 * len(ds)


def test_hdf5_dropped_frame_keeps_frame_times(tmp_path, tokenizer_path):
    """Frame 20 of a 20 fps camera is missing: at t = 1.40 s the window shows frame 28 (not 29 as when re-timed)."""
    from wdspq.build.synthetic import render_frames

    path = tmp_path / "drop.h5"
    frames = render_frames(80, 16, 16, np.random.default_rng(0))
    with h5py.File(path, "w") as f:
        for k in range(400):  # 100 Hz actions and observations from t = 0
            f[f"hand/right/policy_output/{k * 10_000_000}"] = np.full(3, k, np.float32)
            f[f"right/franka/end_effector_pose/{k * 10_000_000}"] = np.full(2, k, np.float32)
        for j in range(80):
            if j != 20:
                f[f"oakd_front_view/color/{j * 50_000_000}"] = frames[j]
        f["task_description"] = "pick"
    out = tmp_path / "drop.parquet"
    build_from_hdf5([path], out, progress=False)
    ts = pq.read_table(out).column("frames_ts")[0].as_py()
    assert len(ts) == 79 and 1.0 not in ts and ts[20] == 1.05
    ds = wdspq.ParquetWindowDataset(out, wdspq.WindowSpec(0.1, 0.1), tokenizer=tokenizer_path)
    for t, want in ((1.40, 28), (2.90, 58), (0.95, 19), (1.05, 21)):
        s = ds[int(round(t * 100))]
        assert float(s["t0"]) == t
        assert read_frame_counter(s["frames"][0]) == want, t


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_synthetic_build_is_byte_deterministic_across_processes_under_load(tmp_path):
    load = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<120: pass"])
    try:
        shas = set()
        for run, workers in enumerate((1, 2, 1, 2, 1, 2)):
            out = tmp_path / f"s{run}.parquet"
            subprocess.run([sys.executable, "-m", "wdspq", "build", "synthetic", str(out), "--episodes", "6", "--seconds",
                            "4", "--cameras", "front,wrist", "--camera-fps", "15,30", "--frame-jitter", "0.01",
                            "--frame-drop", "0.05", "--force-hz", "250", "--workers", str(workers), "--no-progress"],
                           check=True, capture_output=True)
            shas.add(_sha(out))
    finally:
        load.kill()
    assert len(shas) == 1, shas


def test_pyarrow_round_trip_keeps_a_valid_table(multi_table, tmp_path, tokenizer_path):
    t = pq.read_table(multi_table)
    kept = t.filter(pc.is_in(t.column("episode_id"), value_set=t.column("episode_id").take([0, 2, 3])))
    out = tmp_path / "filtered.parquet"
    pq.write_table(kept, out)
    meta = validate_table(out, full_media=True)
    assert [s.name for s in meta.streams] == [s.name for s in read_meta(multi_table).streams]
    m = wdspq.export_shards(out, tmp_path / "sh", SPEC2, tokenizer=tokenizer_path, progress=False)
    assert m["num_episodes"] == 3 and m["num_windows"] == len(wdspq.ParquetWindowDataset(out, SPEC2, tokenizer=tokenizer_path))


def test_version1_table_samples_unchanged(tmp_path, tokenizer_path):
    """A version 1 table: every sample equals what the version 1 code produced (digests in tests/data), map-style
    and streamed from a new export."""
    path = tmp_path / "v1.parquet"
    write_v1_table(path)
    gold = json.loads((HERE / "data" / "v1_golden.json").read_text())
    assert gold["spec"] == V1_SPEC
    meta = validate_table(path, full_media=True)
    assert meta.read_as == 1 and [s.name for s in meta.streams] == ["actions", "observations", "frames", "image"]
    ds = wdspq.ParquetWindowDataset(path, V1_SPEC, tokenizer=tokenizer_path)
    assert len(ds) == len(gold["windows"])
    for i, want in enumerate(gold["windows"]):
        got = sample_digest(ds.sample_numpy(i))
        assert set(got) - set(want) == {"frames_ts"}, i
        assert {k: got[k] for k in want} == want, i
    wdspq.export_shards(path, tmp_path / "sh", V1_SPEC, tokenizer=tokenizer_path, samples_per_shard=5, progress=False)
    n = 0
    for s in wdspq.ShardStream(tmp_path / "sh", shuffle=False):
        want = gold["windows"][int(s["window_index"])]
        got = sample_digest(s)
        assert {k: got[k] for k in want} == want
        n += 1
    assert n == len(gold["windows"])


def test_per_stream_overrides(multi_table, tokenizer_path):
    spec = wdspq.WindowSpec(0.5, 0.2, video_frame_offsets=[0],
                            overrides={"force": {"obs_length_sec": 0.04}, "wrist": {"video_frame_offsets": [-2, 0]}})
    ds = wdspq.ParquetWindowDataset(multi_table, spec, tokenizer=tokenizer_path)
    s = ds[3]
    assert s["force"].shape == (10, 6) and s["observations"].shape == (10, 12)
    assert s["wrist"].shape[0] == 2 and s["front"].shape[0] == 1
    assert wdspq.WindowSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(wdspq.SpecError, match="not signal streams or cameras"):
        wdspq.ParquetWindowDataset(multi_table, wdspq.WindowSpec(0.5, 0.2, overrides={"nope": {"obs_length_sec": 1}}),
                                   tokenizer=tokenizer_path)


def test_writer_names_episode_and_stream(tmp_path):
    from wdspq.table import Episode, TableWriter, actions_stream, camera_stream, signal_stream

    streams = [actions_stream(2), signal_stream("joints", 3), camera_stream("front", 8, 8)]
    ts = np.arange(5) / 10
    with pytest.raises(SchemaError, match=r"episode 'e1', stream 'joints': expected shape \(n, 3\)"):
        with TableWriter(tmp_path / "t.parquet", streams) as w:
            w.add(Episode("e1", "", ts, np.zeros((5, 2), np.float32), signals={"joints": (ts, np.zeros((5, 2)))},
                          cameras={"front": (None, np.zeros(0))}))
    assert not list(tmp_path.iterdir())  # nothing half-written
    with pytest.raises(SchemaError, match="exactly one 'actions' stream"):
        TableWriter(tmp_path / "t.parquet", [signal_stream("joints", 3)])
    with pytest.raises(SchemaError, match="reserved"):
        TableWriter(tmp_path / "t.parquet", [actions_stream(2), signal_stream("t0", 1)])


def test_build_refuses_existing_output_and_inputs(tmp_path, small_table):
    from wdspq.cli import main

    out = tmp_path / "t.parquet"
    args = ["build", "synthetic", str(out), "--episodes", "1", "--seconds", "1.5", "--no-progress"]
    assert main(args) == 0
    before = _sha(out)
    assert main(args) == 2 and _sha(out) == before
    assert main([*args, "--overwrite"]) == 0
    with pytest.raises(SchemaError, match="is also an input"):
        wdspq.build.build_from_seed(small_table, small_table)


def test_hdf5_two_cameras_and_extra_signal_by_flags(tmp_path):
    from wdspq.build.synthetic import render_frames
    from wdspq.cli import main

    path = tmp_path / "two.h5"
    frames = render_frames(10, 16, 16, np.random.default_rng(1))
    with h5py.File(path, "w") as f:
        for k in range(50):
            f[f"hand/right/policy_output/{k * 10_000_000}"] = np.full(3, k, np.float32)
            f[f"robot/joints/{k * 4_000_000 + 1}"] = np.full(5, k, np.float32)
        for j in range(10):
            f[f"cam/a/{j * 50_000_000}"] = frames[j]
            f[f"cam/b/{j * 33_000_000 + 7}"] = frames[9 - j]
    out = tmp_path / "two.parquet"
    assert main(["build", "hdf5", str(path), str(out), "--camera", "front=cam/a", "--camera", "wrist=cam/b",
                 "--signal", "joints=robot/joints", "--observations-group", "", "--text-dataset", "",
                 "--no-progress"]) == 0
    meta = validate_table(out, full_media=True)
    assert [(s.name, s.kind) for s in meta.streams] == [("actions", "actions"), ("joints", "signal"),
                                                        ("front", "camera"), ("wrist", "camera")]
    t = pq.read_table(out)
    assert t.column("wrist_ts")[0].as_py()[1] == 0.033000007
    clip, _ = wdspq.media.decode_video(t.column("wrist")[0].as_py())
    np.testing.assert_array_equal(clip, frames[::-1].transpose(0, 3, 1, 2))  # lossless, order by timestamp


def test_v1_table_with_undescribed_video_is_refused(tmp_path):
    path = tmp_path / "v1.parquet"
    write_v1_table(path)
    t = pq.read_table(path)
    raw = json.loads(pq.read_metadata(path).metadata[b"wdspq"])
    raw["frame_height"] = raw["frame_width"] = 0  # clips in the file, no frame size in the metadata
    bad = tmp_path / "bad.parquet"
    with pq.ParquetWriter(bad, t.schema.remove_metadata()) as w:
        w.write_table(t.replace_schema_metadata(None))
        w.add_key_value_metadata({"wdspq": json.dumps(raw)})
    with pytest.raises(SchemaError, match="column 'video': holds media but the table metadata describes no camera"):
        validate_table(bad)
