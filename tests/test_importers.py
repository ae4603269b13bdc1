"""Importers: LeRobot v2.1 / v3.0 folders and robomimic files -> the canonical table.

The LeRobot datasets are written by tests/lerobot_fixture.py in LeRobot's on-disk layouts (2 cameras, one
AV1 and one H.264, 3 episodes of different lengths, 2 tasks, frames carrying their numbers); every
imported value is checked against that ground truth, and every frame against PyAV's own decode of the
source file."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lerobot_fixture import (
    CAMERAS,
    EP_TASK,
    FPS,
    LENGTHS,
    TASKS,
    V3_FILES,
    actions_of,
    decode_all,
    read_pattern,
    state_of,
    write_v21,
    write_v30,
)

import wdspq
from wdspq.build import build_from_lerobot, build_from_robomimic, parse_episodes
from wdspq.build.lerobot import FramesOffRowsWarning
from wdspq.cli import main as cli_main
from wdspq.errors import SchemaError
from wdspq.media import decode_video
from wdspq.table import read_meta
from wdspq.table.validate import validate_table

CODECS = {"v2.1": {CAMERAS[0]: "libsvtav1", CAMERAS[1]: "libx264"},
          "v3.0": {CAMERAS[0]: "libx264", CAMERAS[1]: "libsvtav1"}}
WRITERS = {"v2.1": write_v21, "v3.0": write_v30}
SPEC = wdspq.WindowSpec(acts_length_sec=0.3, obs_length_sec=0.2, video_frame_offsets=[-1, 0])


@pytest.fixture(scope="module", params=["v2.1", "v3.0"])
def lerobot(request, tmp_path_factory) -> tuple[str, Path, Path]:
    """(version, dataset folder, imported table)."""
    version = request.param
    root = WRITERS[version](tmp_path_factory.mktemp("lr") / f"ds-{version}", CODECS[version])
    out = root.parent / "table.parquet"
    build_from_lerobot(root, out, progress=False)
    return version, root, out


def _reference_frames(version: str, root: Path, cam: str) -> dict[int, np.ndarray]:
    """Per episode, the source frames as PyAV decodes each whole file front to back (independent of the
    importer's seeking and cutting)."""
    out = {}
    if version == "v2.1":
        for ep in range(len(LENGTHS)):
            out[ep] = decode_all(root / f"videos/chunk-000/{cam}/episode_{ep:06d}.mp4")
        return out
    for file_index, eps in enumerate(V3_FILES[cam]):
        frames, start = decode_all(root / f"videos/{cam}/chunk-000/file-{file_index:03d}.mp4"), 0
        for ep in eps:
            out[ep] = frames[start:start + LENGTHS[ep]]
            start += LENGTHS[ep]
        assert start == len(frames)
    return out


def test_lerobot_streams_and_metadata(lerobot):
    version, root, out = lerobot
    meta = validate_table(str(out), full_media=True)
    assert [(s.name, s.kind) for s in meta.streams] == [
        ("actions", "actions"), ("observation.state", "signal"), (CAMERAS[0], "camera"), (CAMERAS[1], "camera")]
    assert meta.actions.names == [f"a{j}" for j in range(6)] and meta.stream("observation.state").names == [f"q{j}" for j in range(4)]
    assert all(s.rate_hz == FPS for s in meta.streams)
    assert all(meta.stream(c).hw == (48, 64) and meta.stream(c).lossless for c in CAMERAS)
    lr = meta.extra["lerobot"]
    assert lr["codebase_version"] == version and lr["skipped_features"] == ["next.done"]
    has_stats = (root / "meta/stats.json").is_file() or (root / "meta/episodes_stats.jsonl").is_file()
    assert (lr["stats"] is not None) == has_stats


def test_lerobot_values_timestamps_text_and_splits(lerobot):
    version, _, out = lerobot
    t = pq.read_table(out).to_pylist()
    assert [r["episode_id"] for r in t] == ["episode_000000", "episode_000001", "episode_000002"]
    for ep, row in enumerate(t):
        n = LENGTHS[ep]
        np.testing.assert_array_equal(np.array(row["actions"], np.float32), actions_of(ep))
        np.testing.assert_array_equal(np.array(row["observation.state"], np.float32), state_of(ep))
        exact = np.arange(n) / FPS  # float64 frame_index / fps, not the float32 values of the rows
        for col in ("action_ts", "observation.state_ts", f"{CAMERAS[0]}_ts", f"{CAMERAS[1]}_ts"):
            assert np.array_equal(np.array(row[col]), exact), col
        assert row["text"] == TASKS[EP_TASK[ep]]
        assert row["split"] == ({0: "train", 1: "train", 2: "valid"}[ep] if version == "v2.1" else "train")


def test_lerobot_every_frame_is_the_source_frame(lerobot):
    """Lossless import: each table frame is exactly the frame PyAV decodes from the source file, and it
    carries the right camera, episode and frame number."""
    version, root, out = lerobot
    t = pq.read_table(out, columns=list(CAMERAS)).to_pylist()
    for c, cam in enumerate(CAMERAS):
        ref = _reference_frames(version, root, cam)
        for ep, row in enumerate(t):
            frames, _ = decode_video(row[cam])
            assert frames.shape == (LENGTHS[ep], 3, 48, 64)
            assert [read_pattern(f) for f in frames] == [(c, ep, i) for i in range(LENGTHS[ep])]
            np.testing.assert_array_equal(frames.transpose(0, 2, 3, 1), ref[ep])


def test_lerobot_table_exports_streams_and_verifies(lerobot, tmp_path, tokenizer_path):
    _, _, out = lerobot
    m = wdspq.export_shards(out, tmp_path / "shards", SPEC, tokenizer=tokenizer_path, samples_per_shard=10, progress=False)
    ds = wdspq.ParquetWindowDataset(str(out), SPEC, tokenizer=tokenizer_path)
    assert m["num_windows"] == len(ds) == sum(LENGTHS)
    got = sorted(int(s["window_index"]) for s in wdspq.ShardStream(str(tmp_path / "shards"), shuffle=False))
    assert got == list(range(len(ds)))
    from wdspq.verify import verify_shards

    assert verify_shards(str(tmp_path / "shards"), table=str(out), tokenizer=tokenizer_path).ok
    s = ds[LENGTHS[0] + 3]  # episode 1, anchor frame 3: offsets -1, 0 -> frames 2, 3 of episode 1
    assert [read_pattern(f.numpy()) for f in s[CAMERAS[1]]] == [(1, 1, 2), (1, 1, 3)]


def test_lerobot_episode_selection_split_and_lossy_option(tmp_path):
    root = write_v21(tmp_path / "ds", CODECS["v2.1"])
    assert cli_main(["build", "lerobot", str(root), str(tmp_path / "a.parquet"), "--episodes", "0,2", "--no-progress"]) == 0
    assert [r["episode_id"] for r in pq.read_table(tmp_path / "a.parquet", columns=["episode_id"]).to_pylist()] == [
        "episode_000000", "episode_000002"]
    build_from_lerobot(root, tmp_path / "v.parquet", split="valid", video_codec="h264", progress=False)
    meta = read_meta(tmp_path / "v.parquet")
    assert meta.num_episodes == 1 and not meta.stream(CAMERAS[0]).lossless
    frames, _ = decode_video(pq.read_table(tmp_path / "v.parquet").column(CAMERAS[0])[0].as_py())
    assert [read_pattern(f) for f in frames] == [(0, 2, i) for i in range(LENGTHS[2])]  # lossy, still the right frames
    with pytest.raises(SchemaError, match=r"episode\(s\) 7 not found"):
        build_from_lerobot(root, tmp_path / "b.parquet", episodes=[0, 7], progress=False)
    with pytest.raises(SchemaError, match="split 'test' not found; its splits: train, valid"):
        build_from_lerobot(root, tmp_path / "b.parquet", split="test", progress=False)
    assert not (tmp_path / "b.parquet").exists()


def test_parse_episodes():
    assert parse_episodes("0,3,5-9") == [0, 3, 5, 6, 7, 8, 9]
    assert parse_episodes(" 4, 2,2 ") == [2, 4]
    for bad in ("x", "3-1", "", "-2"):
        with pytest.raises(SchemaError, match="--episodes"):
            parse_episodes(bad)


def _expect_refused(root: Path, out: Path, *patterns: str) -> None:
    with pytest.raises(SchemaError) as e:
        build_from_lerobot(root, out, progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    for p in patterns:
        assert p in msg, msg
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))  # no table, no temporary left


def test_lerobot_bad_input_is_named_and_writes_nothing(tmp_path):
    out = tmp_path / "out" / "t.parquet"
    out.parent.mkdir()
    (tmp_path / "plain").mkdir()
    _expect_refused(tmp_path / "plain", out, "plain", "not a LeRobot dataset (no meta/info.json)")

    root = write_v21(tmp_path / "ds", CODECS["v2.1"])
    info = json.loads((root / "meta/info.json").read_text())
    (root / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v1.6"}))
    _expect_refused(root, out, "info.json", "codebase_version 'v1.6'", "v2.1", "v3.0")
    (root / "meta/info.json").write_text(json.dumps(info))

    video = root / f"videos/chunk-000/{CAMERAS[1]}/episode_000001.mp4"
    shutil.move(video, tmp_path / "kept.mp4")
    _expect_refused(root, out, "episode 1", CAMERAS[1], "episode_000001.mp4", "not found")
    shutil.move(tmp_path / "kept.mp4", video)

    # episode 1 loses its last row (metadata agrees): its videos now have one frame more than it has rows
    data = root / "data/chunk-000/episode_000001.parquet"
    t = pq.read_table(data)
    pq.write_table(t.slice(0, t.num_rows - 1), data)
    lines = (root / "meta/episodes.jsonl").read_text().splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), "length": LENGTHS[1] - 1})
    (root / "meta/episodes.jsonl").write_text("\n".join(lines) + "\n")
    # a video with more (or fewer) frames than rows is imported as it is, with a warning (its frames keep
    # their own times; windows match them by time within tolerance_s)
    with pytest.warns(FramesOffRowsWarning, match="episode_000001"):
        build_from_lerobot(root, out, progress=False)
    off = read_meta(str(out)).extra["lerobot"]["frames_off_rows"]["episode_000001"]
    assert off[CAMERAS[1]] == {"frames": LENGTHS[1], "rows": LENGTHS[1] - 1, "frames_on_rows": LENGTHS[1] - 1}
    out.unlink()

    lines[1] = json.dumps({**json.loads(lines[1]), "length": LENGTHS[1]})
    (root / "meta/episodes.jsonl").write_text("\n".join(lines) + "\n")
    _expect_refused(root, out, "episode 1", "episode_000001.parquet", f"says {LENGTHS[1]} frames", f"has {LENGTHS[1] - 1} rows")
    assert cli_main(["build", "lerobot", str(root), str(out), "--no-progress"]) == 2


def test_lerobot_v3_tasks_written_by_pandas_with_an_unnamed_index(tmp_path):
    """pandas stores a DataFrame's unnamed index as `__index_level_0__`: the task strings are found there."""
    root = write_v30(tmp_path / "ds", CODECS["v3.0"])
    pq.write_table(pa.table({"task_index": pa.array([0, 1], pa.int64()), "__index_level_0__": list(TASKS)}),
                   root / "meta/tasks.parquet")
    ep_file = root / "meta/episodes/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(ep_file).drop_columns(["tasks"]), ep_file)  # texts must come from task_index
    build_from_lerobot(root, tmp_path / "t.parquet", progress=False)
    assert pq.read_table(tmp_path / "t.parquet", columns=["text"]).column("text").to_pylist() == [TASKS[i] for i in EP_TASK]


# ---------------------------------------------------------------------------------------------------
# robomimic

DEMO_LENGTHS = {0: 7, 1: 5, 10: 6}  # demo_10 sorts after demo_1 (numerically)


def _write_robomimic(path: Path, env_args: dict | None = None) -> None:
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(env_args if env_args is not None else
                                            {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}})
        for n, t in DEMO_LENGTHS.items():
            g = data.create_group(f"demo_{n}")
            g.attrs["num_samples"] = t
            g["actions"] = (np.arange(t * 7).reshape(t, 7) + n).astype(np.float64)
            g["obs/robot0_eef_pos"] = np.full((t, 3), n, np.float64) + np.arange(t)[:, None]
            g["obs/object"] = np.arange(t * 10).reshape(t, 10).astype(np.float32)
            g["obs/agentview_image"] = np.stack([np.full((16, 24, 3), 10 * n + i, np.uint8) for i in range(t)])
            g["obs/agentview_depth"] = np.zeros((t, 16, 24, 1), np.float32)
            g["states"] = np.zeros((t, 5))
        f["mask/train"] = np.array([b"demo_0", b"demo_10"])
        f["mask/valid"] = np.array([b"demo_1"])
        f["mask/20_percent"] = np.array([b"demo_10"])


def test_robomimic_import_with_splits(tmp_path):
    src = tmp_path / "lift.hdf5"
    _write_robomimic(src)
    out = tmp_path / "t.parquet"
    meta = build_from_robomimic(src, out, progress=False)
    assert validate_table(str(out), full_media=True).num_episodes == 3
    assert [(s.name, s.kind, s.width or s.hw) for s in meta.streams] == [
        ("actions", "actions", 7), ("object", "signal", 10), ("robot0_eef_pos", "signal", 3),  # HDF5's (sorted) order
        ("agentview_image", "camera", (16, 24))]
    assert meta.actions.rate_hz == 20.0 and meta.extra["robomimic"]["skipped_obs"] == ["agentview_depth"]
    rows = pq.read_table(out).to_pylist()
    assert [(r["episode_id"], r["split"], r["text"]) for r in rows] == [
        ("demo_0", "train", "Lift"), ("demo_1", "valid", "Lift"), ("demo_10", "train", "Lift")]
    for r, (n, t) in zip(rows, DEMO_LENGTHS.items()):
        np.testing.assert_array_equal(np.array(r["actions"]), np.arange(t * 7).reshape(t, 7) + n)
        assert np.array_equal(np.array(r["action_ts"]), np.arange(t) / 20.0)
        frames, _ = decode_video(r["agentview_image"])
        assert frames[:, 0, 0, 0].tolist() == [10 * n + i for i in range(t)]  # FFV1: exact
    valid = tmp_path / "valid.parquet"
    assert cli_main(["build", "robomimic", str(src), str(valid), "--split", "valid", "--text", "lift the cube",
                     "--no-progress"]) == 0
    assert pq.read_table(valid, columns=["episode_id", "text"]).to_pylist() == [{"episode_id": "demo_1", "text": "lift the cube"}]
    build_from_robomimic(src, tmp_path / "p.parquet", split="20_percent", episodes=[10], progress=False)
    assert pq.read_table(tmp_path / "p.parquet", columns=["episode_id"]).column(0).to_pylist() == ["demo_10"]


def test_robomimic_rate_and_bad_input(tmp_path):
    src = tmp_path / "norate.hdf5"
    _write_robomimic(src, env_args={"env_name": "Lift", "env_lang": "lift the red cube", "env_kwargs": {}})
    with pytest.raises(SchemaError, match="no env_kwargs.control_freq; give the rate with --rate"):
        build_from_robomimic(src, tmp_path / "t.parquet", progress=False)
    meta = build_from_robomimic(src, tmp_path / "t.parquet", rate=10, progress=False)
    assert meta.actions.rate_hz == 10.0
    assert pq.read_table(tmp_path / "t.parquet", columns=["text"]).column(0)[0].as_py() == "lift the red cube"
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(SchemaError, match=r"other.h5: not a robomimic file \(no group 'data'"):
        build_from_robomimic(tmp_path / "other.h5", tmp_path / "u.parquet", progress=False)
    with pytest.raises(SchemaError, match="is also an input"):
        build_from_robomimic(src, src, progress=False)
    assert not (tmp_path / "u.parquet").exists()


# ---------------------------------------------------------------------------------------------------
# the README's own-importer example

ROOT = Path(__file__).resolve().parent.parent


def test_readme_custom_importer_example_runs_and_validates(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(# a custom in-memory recording -> a table\n.*?)```", text, re.S).group(1)
    assert len(code.strip().splitlines()) <= 25
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    meta = validate_table("data/mine.parquet", full_media=True)
    assert meta.num_episodes == 3 and [c.name for c in meta.cameras] == ["wrist"]
    assert (meta.actions.rate_hz, meta.stream("wrist").rate_hz) == (20.0, 10.0)


def test_table_writer_names_the_episode_and_stream_of_a_problem(tmp_path):
    streams = [wdspq.actions_stream(2), wdspq.signal_stream("joints", 3)]
    t = np.arange(4) / 10
    good = dict(text="", action_ts=t, actions=np.zeros((4, 2), np.float32))
    cases = [
        (dict(episode_id="e1", signals={"joints": (t, np.zeros((4, 2), np.float32))}), "episode 'e1', stream 'joints': expected shape (n, 3)"),
        (dict(episode_id="e2", signals={"joints": (t[::-1], np.zeros((4, 3), np.float32))}), "episode 'e2', stream 'joints'"),
        (dict(episode_id="e3", signals={}), "episode 'e3': signal streams [] differ from the table's ['joints']"),
    ]
    for kw, msg in cases:
        with pytest.raises(SchemaError, match=re.escape(msg)):
            with wdspq.TableWriter(tmp_path / "t.parquet", streams) as w:
                w.add(wdspq.Episode(**good, **kw))
        assert not (tmp_path / "t.parquet").exists() and not list(tmp_path.glob(".t.parquet*"))


def test_lerobot_image_features_become_cameras(tmp_path):
    """`dtype: image` features (PNG bytes in the rows, as LeRobot stores them) import as cameras, exactly."""
    from lerobot_fixture import pattern

    from wdspq.media import encode_png

    root = write_v21(tmp_path / "ds", CODECS["v2.1"])
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["observation.images.top"] = {"dtype": "image", "shape": [48, 64, 3], "names": ["height", "width", "channel"]}
    (root / "meta/info.json").write_text(json.dumps(info))
    for ep, n in enumerate(LENGTHS):
        p = root / f"data/chunk-000/episode_{ep:06d}.parquet"
        cells = [{"bytes": encode_png(pattern(2, ep, i)), "path": None} for i in range(n)]
        pq.write_table(pq.read_table(p).append_column("observation.images.top", pa.array(cells)), p)
    build_from_lerobot(root, tmp_path / "t.parquet", episodes=[1], progress=False)
    frames, _ = decode_video(pq.read_table(tmp_path / "t.parquet").column("observation.images.top")[0].as_py())
    np.testing.assert_array_equal(frames.transpose(0, 2, 3, 1), np.stack([pattern(2, 1, i) for i in range(LENGTHS[1])]))


def test_a_video_pyav_cannot_decode_names_the_codec_and_the_file(tmp_path, monkeypatch):
    """The decoder's failure (here simulated: this PyAV decodes every codec LeRobot writes) is one line
    naming the episode, the camera, the file and the codec."""
    import av

    root = write_v21(tmp_path / "ds", CODECS["v2.1"])
    real_open = av.open

    class NoDecoder:
        def __init__(self, path, *a, **k):
            self.c = real_open(path, *a, **k)
            self.streams = self.c.streams

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.c.close()

        def seek(self, *a, **k):
            return self.c.seek(*a, **k)

        def decode(self, stream):
            raise av.error.DecoderNotFoundError(0, "decoder not found")

    monkeypatch.setattr(av, "open", lambda path, *a, **k: NoDecoder(path, *a, **k) if str(path).endswith(".mp4") else real_open(path, *a, **k))
    with pytest.raises(SchemaError) as e:
        build_from_lerobot(root, tmp_path / "t.parquet", progress=False)
    msg = str(e.value)
    assert "episode 0" in msg and CAMERAS[0] in msg and "episode_000000.mp4" in msg and "libdav1d" in msg, msg
    assert not (tmp_path / "t.parquet").exists()


def test_clip_writer_frame_by_frame_equals_encode_clip():
    frames = np.random.default_rng(1).integers(0, 255, (5, 16, 24, 3), dtype=np.uint8)
    for codec in ("ffv1", "h264"):
        # libx264 through PyAV is intermittently not byte-deterministic even with one thread (one encode in
        # several differs), so h264 gets three tries of each path: the writer must match one of the clips.
        tries = 1 if codec == "ffv1" else 3
        clips = {wdspq.encode_clip(frames, codec=codec) for _ in range(tries)}
        for _ in range(tries):
            w = wdspq.ClipWriter(16, 24, codec=codec)
            for f in frames:
                w.add(f)
            got = w.close()
            if got in clips:
                break
        assert got in clips
    w = wdspq.ClipWriter(16, 24)
    with pytest.raises(wdspq.MediaError, match=r"frame 0 is \(16, 16, 3\), the clip's frames are \(16, 24, 3\)"):
        w.add(frames[0][:, :16])
