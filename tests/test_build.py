"""Builders: synthetic (deterministic), seed-layout import, HDF5 conversion; outputs validate; faults are named."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wdspq.build import Hdf5Layout, build_from_hdf5, build_from_seed, build_synthetic, ns_to_seconds
from wdspq.cli import main
from wdspq.errors import SchemaError
from wdspq.media import decode_video, encode_png
from wdspq.table.validate import validate_table

# ---------------------------------------------------------------------------------------------------
# synthetic


def test_synthetic_validates(small_table):
    meta = validate_table(small_table, full_media=True)
    assert meta.num_episodes == 6 and meta.stream("frames").rate_hz == 20.0
    assert meta.actions.rate_hz == 100.0 and meta.stream("observations").rate_hz == 50.0  # snapped, exact


def test_synthetic_is_byte_deterministic(tmp_path):
    kw = dict(episodes=5, seconds=1.0, image_size=16, video_size=16, seed=3, row_group_size=2, progress=False)
    a, b, c = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    build_synthetic(a, **kw)
    build_synthetic(b, **kw)
    build_synthetic(c, **{**kw, "workers": 2})
    assert a.read_bytes() == b.read_bytes() == c.read_bytes()
    build_synthetic(b, **{**kw, "seed": 4})
    assert a.read_bytes() != b.read_bytes()


# ---------------------------------------------------------------------------------------------------
# seed layout (as written by the seed project's parquet_create.py)

SEED_TASKS = ["pick up the red cube", "open the drawer", "wipe the table"]


def _write_mp4v(path: Path, frames: np.ndarray, fps: int = 20) -> None:
    """The seed wrote its clips with OpenCV's mp4v fourcc: MPEG-4 part 2, which is PyAV's 'mpeg4'."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


def make_seed_table(root: Path, table_rel: str = "seed.parquet", n: int = 10) -> dict:
    """A seed-layout table of `n` episodes with media under root/media, paths relative to `root`."""
    rng = np.random.default_rng(0)
    (root / "media").mkdir(parents=True, exist_ok=True)
    rows: dict[str, list] = {"text": [], "actions": [], "observations": [], "image": [], "video": []}
    for i in range(n):
        n_a, n_o = 30 + 7 * i, 15 + 3 * i
        ta = np.arange(n_a) / 100.0  # seed timestamps start at 0
        to = np.arange(n_o) / 50.0 + 0.001
        acts = np.column_stack([ta, rng.normal(size=(n_a, 4))])
        obs = np.column_stack([to, rng.normal(size=(n_o, 6))])
        img = rng.integers(0, 255, size=(12, 10, 3), dtype=np.uint8)
        (root / f"media/img_{i:03d}.png").write_bytes(encode_png(img))
        frames = np.zeros((4 + i % 3, 16, 24, 3), np.uint8)
        frames[:, :, :, 0] = (np.arange(len(frames)) * 40)[:, None, None]
        _write_mp4v(root / f"media/vid_{i:03d}.mp4", frames)
        rows["text"].append(SEED_TASKS[i % 3])
        rows["actions"].append(acts.tolist())
        rows["observations"].append(obs.tolist())
        rows["image"].append(f"media/img_{i:03d}.png")
        rows["video"].append(f"media/vid_{i:03d}.mp4")
    table = pa.table(rows)  # pandas-style inference: list<list<double>>, string paths
    assert table.schema.field("actions").type == pa.list_(pa.list_(pa.float64()))
    path = root / table_rel
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=4)
    return {"path": path, "rows": rows}


def _check_seed_import(out: Path, seed: dict, media_root: Path) -> None:
    meta = validate_table(out, full_media=True)
    rows = seed["rows"]
    assert meta.num_episodes == 10 and meta.actions.width == 4 and meta.stream("observations").width == 6
    assert (meta.stream("frames").hw, meta.stream("frames").rate_hz) == ((16, 24), 20.0)
    assert meta.stream("image").hw == (12, 10)
    t = pq.read_table(out)
    assert t.column("episode_id").to_pylist() == [f"seed-{i:06d}" for i in range(10)]
    assert t.column("text").to_pylist() == rows["text"]
    for i in range(10):
        acts, obs = np.array(rows["actions"][i]), np.array(rows["observations"][i])
        np.testing.assert_array_equal(np.array(t.column("action_ts")[i].as_py()), acts[:, 0])
        np.testing.assert_array_equal(np.array(t.column("observations_ts")[i].as_py()), obs[:, 0])
        np.testing.assert_array_equal(np.array(t.column("actions")[i].as_py(), np.float32), acts[:, 1:].astype(np.float32))
        np.testing.assert_array_equal(
            np.array(t.column("observations")[i].as_py(), np.float32), obs[:, 1:].astype(np.float32)
        )
        assert t.column("image")[i].as_py() == (media_root / rows["image"][i]).read_bytes()
        assert t.column("frames")[i].as_py() == (media_root / rows["video"][i]).read_bytes()  # clips kept as they are
        n_frames = 4 + i % 3
        assert t.column("frames_ts")[i].as_py() == (np.arange(n_frames) / 20.0).tolist()  # frame j at j / fps
    clip, fps = decode_video(t.column("frames")[2].as_py())
    assert fps == 20.0 and clip.shape == (4 + 2 % 3, 3, 16, 24)


def test_seed_import_paths_relative_to_table_folder(tmp_path, monkeypatch):
    seed = make_seed_table(tmp_path / "seedrun")
    monkeypatch.chdir(tmp_path)  # not the folder the paths are relative to
    out = tmp_path / "out" / "table.parquet"
    build_from_seed(seed["path"], out, progress=False)
    _check_seed_import(out, seed, tmp_path / "seedrun")


def test_seed_import_paths_relative_to_working_directory(tmp_path, monkeypatch):
    seed = make_seed_table(tmp_path, table_rel="tables/seed.parquet")
    monkeypatch.chdir(tmp_path)  # the seed ran here; the table lies in tables/
    out = tmp_path / "table.parquet"
    build_from_seed(seed["path"], out, progress=False)
    _check_seed_import(out, seed, tmp_path)


def test_seed_missing_media_lists_first_paths(tmp_path, monkeypatch):
    seed = make_seed_table(tmp_path / "s", n=10)
    for i in (1, 4, 5, 6, 7, 8, 9):
        (tmp_path / f"s/media/img_{i:03d}.png").unlink()
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "t.parquet"
    with pytest.raises(SchemaError) as ei:
        build_from_seed(seed["path"], out, progress=False)
    msg = str(ei.value)
    assert "7 media file(s) not found" in msg
    assert "row 1 image 'media/img_001.png'" in msg and "media/img_004.png" in msg and "and 2 more" in msg
    assert not out.exists() and not list(tmp_path.glob(".t.parquet.tmp-*"))


def test_seed_collapsed_timestamps_are_refused(tmp_path):
    (tmp_path / "x").mkdir()
    t0 = float(np.float32(1742918912.5))
    table = pa.table(
        {
            "text": ["a"],
            "actions": [[[t0, 1.0], [t0, 2.0], [t0, 3.0]]],
            "observations": [[[t0, 1.0], [t0, 2.0]]],
        }
    )
    pq.write_table(table, tmp_path / "x/seed.parquet")
    with pytest.raises(SchemaError) as ei:
        build_from_seed(tmp_path / "x/seed.parquet", tmp_path / "t.parquet", progress=False)
    msg = str(ei.value)
    assert "seed-000000" in msg and "'actions'" in msg and "not increasing" in msg and "wdspq build hdf5" in msg
    assert not (tmp_path / "t.parquet").exists()


def test_seed_bad_layout(tmp_path):
    pq.write_table(pa.table({"text": ["a"], "actions": [[1.0]]}), tmp_path / "bad.parquet")
    with pytest.raises(SchemaError, match="column 'observations' missing"):
        build_from_seed(tmp_path / "bad.parquet", tmp_path / "t.parquet", progress=False)


# ---------------------------------------------------------------------------------------------------
# HDF5 (seed layout: one dataset per sample, named by its integer ns timestamp)

BASE_NS = 1742918912123456789


def write_h5(
    path: Path,
    a_ns: list[int],
    o_ns: list[int],
    f_ns: list[int],
    text: object = b"pick up the red cube",
    groups: tuple[str, str, str] = ("hand/right/policy_output", "right/franka/end_effector_pose", "oakd_front_view/color"),
    frame_hw: tuple[int, int] = (24, 40),
) -> dict:
    rng = np.random.default_rng(len(a_ns))
    acts = rng.normal(size=(len(a_ns), 7)).astype(np.float32)
    obs = rng.normal(size=(len(o_ns), 8)).astype(np.float64)
    frames = np.zeros((len(f_ns), *frame_hw, 3), np.uint8)
    for i in range(len(f_ns)):
        frames[i, :, : 4 * (i + 1)] = 255  # a growing white bar: frames are distinguishable
        frames[i, :, :, 1] = 30 * i
    with h5py.File(path, "w") as f:
        for ns, v in zip(a_ns, acts):
            f.create_dataset(f"{groups[0]}/{ns}", data=v)
        for ns, v in zip(o_ns, obs):
            f.create_dataset(f"{groups[1]}/{ns}", data=v)
        for ns, v in zip(f_ns, frames):
            f.create_dataset(f"{groups[2]}/{ns}", data=v)
        if isinstance(text, bytes):
            f.create_dataset("task_description", data=np.array([text]))
        elif text is not None:
            f.create_dataset("task_description", data=[text], dtype=h5py.string_dtype())
    return {"acts": acts, "obs": obs, "frames": frames}


def _stamps(start: int, step: int, n: int, jitter: int = 0) -> list[int]:
    return [start + k * step + (k * 7919) % jitter if jitter else start + k * step for k in range(n)]


def exact_seconds(ns: list[int]) -> np.ndarray:
    return np.array([float(Fraction(n, 10**9)) for n in ns])


def test_ns_to_seconds_is_correctly_rounded():
    assert ns_to_seconds([BASE_NS])[0] == float(Fraction(BASE_NS, 10**9))
    ns = _stamps(BASE_NS, 10_000_000, 5000, jitter=1000)
    got = ns_to_seconds(np.array(ns, dtype=np.int64))
    np.testing.assert_array_equal(got, exact_seconds(ns))
    naive = np.array(ns, dtype=np.int64).astype(np.float64) / 1e9
    assert (naive != got).any()  # the naive conversion rounds twice and is off by one ulp here and there


def test_hdf5_converts_exactly(tmp_path):
    a_ns = _stamps(BASE_NS, 10_000_000, 120, jitter=1000)  # 100 Hz
    o_ns = _stamps(BASE_NS + 3_000_000, 20_000_000, 60, jitter=997)  # 50 Hz
    f_ns = _stamps(BASE_NS - 5_000_000, 33_333_333, 9, jitter=500)  # 30 fps
    data = write_h5(tmp_path / "ep_a.h5", a_ns, o_ns, f_ns)
    write_h5(tmp_path / "ep_b.h5", a_ns[:50], o_ns[:20], f_ns[:4], text="open the drawer")
    out = tmp_path / "table.parquet"
    meta = build_from_hdf5([tmp_path / "ep_a.h5", tmp_path / "ep_b.h5"], out, progress=False)
    assert validate_table(out, full_media=True).num_episodes == 2
    assert (meta.actions.width, meta.stream("observations").width, meta.stream("frames").hw) == (7, 8, (24, 40))
    assert meta.stream("frames").lossless and meta.stream("frames").codec == "ffv1"
    t = pq.read_table(out)
    assert t.column("episode_id").to_pylist() == ["ep_a", "ep_b"]
    assert t.column("text").to_pylist() == ["pick up the red cube", "open the drawer"]
    np.testing.assert_array_equal(np.array(t.column("action_ts")[0].as_py()), exact_seconds(a_ns))
    np.testing.assert_array_equal(np.array(t.column("observations_ts")[0].as_py()), exact_seconds(o_ns))
    assert t.column("action_ts")[0].as_py()[0] == float(Fraction(BASE_NS, 10**9))
    np.testing.assert_array_equal(np.array(t.column("frames_ts")[0].as_py()), exact_seconds(f_ns))  # own times, jitter kept
    np.testing.assert_array_equal(np.array(t.column("actions")[0].as_py(), np.float32), data["acts"])
    np.testing.assert_array_equal(
        np.array(t.column("observations")[0].as_py(), np.float32), data["obs"].astype(np.float32)
    )
    clip, fps = decode_video(t.column("frames")[0].as_py())
    assert fps == 30.0 and clip.shape == (9, 3, 24, 40)
    np.testing.assert_array_equal(clip, data["frames"].transpose(0, 3, 1, 2))  # lossless by default
    bar_widths = (clip[:, 0, 12, :] > 127).sum(axis=1)  # frame order kept: the white bar grows 4 px a frame
    np.testing.assert_array_equal(bar_widths, 4 * np.arange(1, 10))


def test_hdf5_sorts_by_integer_timestamp(tmp_path):
    ns = [500_000_000 + k * 100_000_000 for k in range(8)]  # 9 then 10 digits: name order differs
    assert sorted(map(str, ns)) != list(map(str, ns))
    write_h5(tmp_path / "e.h5", ns, ns, ns[:3])
    out = tmp_path / "t.parquet"
    build_from_hdf5([tmp_path / "e.h5"], out, progress=False)
    np.testing.assert_array_equal(np.array(pq.read_table(out).column("action_ts")[0].as_py()), exact_seconds(ns))
    validate_table(out)


def test_hdf5_layout_file_and_overrides(tmp_path):
    groups = ("robot/act", "robot/state", "cam/rgb")
    ns = _stamps(BASE_NS, 10_000_000, 20)
    write_h5(tmp_path / "e.h5", ns, ns, ns[:4], groups=groups, text=None)
    layout_file = tmp_path / "layout.json"
    layout_file.write_text(json.dumps({"actions_group": "robot/act", "observations_group": "wrong", "text_dataset": ""}))
    layout = Hdf5Layout.from_json(layout_file).replace(observations_group="robot/state", frames_group="cam/rgb")
    out = tmp_path / "t.parquet"
    meta = build_from_hdf5([tmp_path], out, layout=layout, progress=False)  # a folder expands to its files
    assert meta.num_episodes == 1 and meta.stream("frames").rate_hz == 100.0
    assert pq.read_table(out).column("text").to_pylist() == [""]
    no_frames = build_from_hdf5([tmp_path / "e.h5"], tmp_path / "nf.parquet", layout=layout.replace(frames_group=""), progress=False)
    assert not no_frames.cameras and "frames" not in pq.read_table(tmp_path / "nf.parquet").column_names
    validate_table(tmp_path / "nf.parquet")


def _h5_missing_group(p):
    ns = _stamps(BASE_NS, 10_000_000, 5)
    write_h5(p, ns, ns, ns, groups=("hand/right/policy_output", "right/franka/other", "oakd_front_view/color"))
    return ["group 'right/franka/end_effector_pose' (signal 'observations') not found"]


def _h5_non_integer_name(p):
    ns = _stamps(BASE_NS, 10_000_000, 5)
    write_h5(p, ns, ns, ns)
    with h5py.File(p, "a") as f:
        f.create_dataset("hand/right/policy_output/latest", data=np.zeros(7, np.float32))
    return ["dataset hand/right/policy_output/latest (actions)", "not an integer timestamp"]


def _h5_varying_frames(p):
    ns = _stamps(BASE_NS, 10_000_000, 5)
    write_h5(p, ns, ns, ns)
    with h5py.File(p, "a") as f:
        f.create_dataset(f"oakd_front_view/color/{ns[-1] + 10_000_000}", data=np.zeros((20, 40, 3), np.uint8))
    return ["frames of varying size", f"oakd_front_view/color/{ns[-1] + 10_000_000}"]


def _h5_varying_dims(p):
    ns = _stamps(BASE_NS, 10_000_000, 5)
    write_h5(p, ns, ns, ns)
    with h5py.File(p, "a") as f:
        f.create_dataset(f"hand/right/policy_output/{ns[-1] + 10_000_000}", data=np.zeros(6, np.float32))
    return [f"dataset /hand/right/policy_output/{ns[-1] + 10_000_000} (actions) has 6 values"]


def _h5_missing_text(p):
    ns = _stamps(BASE_NS, 10_000_000, 5)
    write_h5(p, ns, ns, ns, text=None)
    return ["text dataset 'task_description' not found"]


def _h5_not_hdf5(p):
    p.write_bytes(b"not hdf5 at all")
    return ["not a readable HDF5 file"]


def _h5_duplicate_stamps(p):
    ns = _stamps(BASE_NS, 10_000_000, 5)
    write_h5(p, ns, ns, ns)
    with h5py.File(p, "a") as f:
        f.create_dataset(f"hand/right/policy_output/0{ns[2]}", data=np.zeros(7, np.float32))
    return [f"hand/right/policy_output/0{ns[2]} and hand/right/policy_output/{ns[2]}", "same timestamp"]


def _h5_too_close(p):
    ns = _stamps(BASE_NS, 10_000_000, 5)
    write_h5(p, ns, ns, ns)
    with h5py.File(p, "a") as f:
        f.create_dataset(f"hand/right/policy_output/{ns[-1] + 1}", data=np.zeros(7, np.float32))
    return ["'hand/right/policy_output'", "not strictly increasing", "float64 resolution"]


H5_FAULTS = [
    _h5_missing_group,
    _h5_non_integer_name,
    _h5_varying_frames,
    _h5_varying_dims,
    _h5_missing_text,
    _h5_not_hdf5,
    _h5_duplicate_stamps,
    _h5_too_close,
]


@pytest.mark.parametrize("fault", H5_FAULTS, ids=[f.__name__[4:] for f in H5_FAULTS])
def test_hdf5_faults_are_named(tmp_path, fault):
    good = tmp_path / "a_good.h5"
    ns = _stamps(BASE_NS, 10_000_000, 5)
    write_h5(good, ns, ns, ns)
    bad = tmp_path / "b_bad.h5"
    words = fault(bad)
    out = tmp_path / "t.parquet"
    with pytest.raises(SchemaError) as ei:
        build_from_hdf5([good, bad], out, progress=False)  # fails on the second file, after one episode was added
    msg = str(ei.value)
    assert msg.startswith(str(bad)), msg
    for w in words:
        assert w in msg, (w, msg)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_hdf5_frame_size_differs_between_files(tmp_path):
    ns = _stamps(BASE_NS, 10_000_000, 5)
    write_h5(tmp_path / "a.h5", ns, ns, ns)
    write_h5(tmp_path / "b.h5", ns, ns, ns, frame_hw=(16, 16))
    with pytest.raises(SchemaError, match="stream 'frames' has shape 16x16 .* the first file's"):
        build_from_hdf5([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "t.parquet", progress=False)


def test_hdf5_missing_inputs_listed(tmp_path):
    with pytest.raises(SchemaError, match="HDF5 input not found: .*nope1.h5, .*nope2.h5"):
        build_from_hdf5([tmp_path / "nope1.h5", tmp_path / "nope2.h5"], tmp_path / "t.parquet", progress=False)


def test_hdf5_episodes_select_files_by_position(tmp_path):
    a_ns, o_ns, f_ns = _stamps(BASE_NS, 10_000_000, 30), _stamps(BASE_NS, 20_000_000, 15), _stamps(BASE_NS, 50_000_000, 6)
    for name in ("c", "a", "b"):
        write_h5(tmp_path / f"ep_{name}.h5", a_ns, o_ns, f_ns)
    out = tmp_path / "t.parquet"
    assert main(["build", "hdf5", str(tmp_path), str(out), "--episodes", "0,2", "--no-progress"]) == 0
    assert pq.read_table(out, columns=["episode_id"]).column(0).to_pylist() == ["ep_a", "ep_c"]  # sorted files 0 and 2
    with pytest.raises(SchemaError, match=r"3 HDF5 files: episode\(s\) 5 not found"):
        build_from_hdf5([tmp_path], tmp_path / "u.parquet", episodes=[5], progress=False)


def test_one_video_codec_rule_for_the_importers_the_hdf5_layout_and_the_clip_writer(tmp_path):
    """An unknown clip codec gets one message everywhere: importers refuse it (SchemaError) before any input
    is read (the inputs here do not exist), the clip writer with a MediaError."""
    from wdspq.build import build_from_lerobot, build_from_robomimic
    from wdspq.errors import MediaError
    from wdspq.media import VIDEO_CODECS, ClipWriter, is_lossless

    msg = "video codec 'vp9' is not one of ffv1, h264"
    out = tmp_path / "out.parquet"
    for build in (lambda: build_from_lerobot(tmp_path / "missing", out, video_codec="vp9", progress=False),
                  lambda: build_from_robomimic(tmp_path / "missing.hdf5", out, video_codec="vp9", progress=False),
                  lambda: Hdf5Layout().replace(video_codec="vp9")):
        with pytest.raises(SchemaError, match=msg):
            build()
    with pytest.raises(MediaError, match=msg):
        ClipWriter(4, 4, codec="vp9")
    assert not out.exists()
    assert [c for c in VIDEO_CODECS if is_lossless(c)] == ["ffv1"]
