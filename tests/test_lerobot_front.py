"""The LeRobot front: windows by `delta_timestamps` and `to_lerobot`, checked against LeRobot's own rule.

The oracle below is LeRobot's `__getitem__` rule (0.3.x-0.4.x), written out in the test from the
fixture's ground truth, not with wdspq's window code: per key, deltas in frames `round(d * fps)`; rows
at `clamp(i + delta, 0, length - 1)`; `<key>_is_pad = i + delta` outside the episode; every listed key
stacked `(T, ...)`; frames float32 in [0, 1]; `task` the task string.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from lerobot_fixture import (
    CAMERAS,
    EP_TASK,
    FPS,
    LENGTHS,
    TASKS,
    V3_FILES,
    Recording,
    actions_of,
    decode_all,
    encode_timed,
    pattern,
    read_pattern,
    state_of,
    write_v21,
    write_v30,
)

import wdspq
from wdspq.build import build_from_lerobot
from wdspq.build.lerobot import FramesOffRowsWarning
from wdspq.errors import SpecError
from wdspq.windows import CameraClip, EpisodeArrays, SampleLayout, cut_window

CODECS = {"v2.1": {CAMERAS[0]: "libsvtav1", CAMERAS[1]: "libx264"},
          "v3.0": {CAMERAS[0]: "libx264", CAMERAS[1]: "libsvtav1"}}
WRITERS = {"v2.1": write_v21, "v3.0": write_v30}
# negative, zero and positive offsets for every key, non-uniform steps included
DELTA = {"action": [-0.1, 0.0, 0.1, 0.3, 0.6],
         "observation.state": [-1.0, -0.5, -0.1, 0.0, 0.2],
         CAMERAS[0]: [-0.3, 0.0, 0.2],
         CAMERAS[1]: [-0.1, 0.0, 1.0]}


@pytest.fixture(scope="module", params=["v2.1", "v3.0"])
def exported(request, tmp_path_factory, tokenizer_path):
    """(version, source folder, table, shards folder) for the DELTA spec."""
    version = request.param
    root = WRITERS[version](tmp_path_factory.mktemp("lr") / f"ds-{version}", CODECS[version])
    table = root.parent / "table.parquet"
    build_from_lerobot(root, table, progress=False)
    spec = wdspq.WindowSpec.from_delta_timestamps(DELTA)
    wdspq.export_shards(table, root.parent / "shards", spec, tokenizer=tokenizer_path, samples_per_shard=9,
                        progress=False)
    return version, root, table, root.parent / "shards"


def _source_frames(version: str, root: Path, cam: str) -> list[np.ndarray]:
    """Per episode, the source video's frames as PyAV decodes whole files front to back."""
    if version == "v2.1":
        return [decode_all(root / f"videos/chunk-000/{cam}/episode_{ep:06d}.mp4") for ep in range(len(LENGTHS))]
    out: list[np.ndarray] = []
    for file_index, eps in enumerate(V3_FILES[cam]):
        frames, start = decode_all(root / f"videos/{cam}/chunk-000/file-{file_index:03d}.mp4"), 0
        for ep in eps:
            out.append(frames[start:start + LENGTHS[ep]])
            start += LENGTHS[ep]
    return out


def lerobot_item(ep: int, i: int, frames: dict[str, list[np.ndarray]]) -> dict:
    """LeRobot's `__getitem__` of frame i of episode ep under DELTA, from the ground truth."""
    n = LENGTHS[ep]
    item: dict = {}
    values = {"action": actions_of(ep), "observation.state": state_of(ep)}
    for key, deltas in DELTA.items():
        shifted = np.array([i + round(d * FPS) for d in deltas])
        rows = np.clip(shifted, 0, n - 1)
        item[f"{key}_is_pad"] = torch.from_numpy((shifted < 0) | (shifted >= n))
        if key in frames:
            chw = frames[key][ep][rows].transpose(0, 3, 1, 2)
            item[key] = torch.from_numpy(np.ascontiguousarray(chw)).to(torch.float32) / 255.0
        else:
            item[key] = torch.from_numpy(values[key][rows])
    item.update(task=TASKS[EP_TASK[ep]], episode_index=torch.tensor(ep), frame_index=torch.tensor(i),
                index=torch.tensor(sum(LENGTHS[:ep]) + i), task_index=torch.tensor(EP_TASK[ep]),
                timestamp=torch.tensor(np.float32(i / FPS)))
    return item


def test_streamed_samples_equal_lerobots_getitem_for_every_frame(exported, tokenizer_path):
    version, root, table, shards = exported
    frames = {cam: _source_frames(version, root, cam) for cam in CAMERAS}
    streamed = {int(s["window_index"]): s for s in wdspq.ShardStream(str(shards), shuffle=False)}
    assert len(streamed) == sum(LENGTHS)
    ds = wdspq.ParquetWindowDataset(str(table), wdspq.WindowSpec.from_delta_timestamps(DELTA), tokenizer=tokenizer_path)
    checked = 0
    for ep, n in enumerate(LENGTHS):
        for i in range(n):
            w = sum(LENGTHS[:ep]) + i
            sample = streamed[w]
            mapped = ds[w]
            assert set(sample) == set(mapped) and all(torch.equal(sample[k], mapped[k]) for k in sample), w
            got, want = wdspq.to_lerobot(sample), lerobot_item(ep, i, frames)
            for key, v in want.items():
                if isinstance(v, str):
                    assert got[key] == v, (ep, i, key)
                else:
                    assert got[key].dtype == v.dtype and torch.equal(got[key], v), (ep, i, key, got[key], v)
            assert not any(k.endswith(("_mask", "_ts")) for k in got if k != "attention_mask")
            checked += 1
    assert checked == sum(LENGTHS)


def test_to_lerobot_of_a_batch_equals_the_stacked_samples_and_uint8_frames(exported):
    _, _, _, shards = exported
    samples = [s for _, s in zip(range(6), wdspq.ShardStream(str(shards), shuffle=False))]
    batch = torch.utils.data.default_collate(samples)
    got = wdspq.to_lerobot(batch)
    per = torch.utils.data.default_collate([wdspq.to_lerobot(s) for s in samples])  # as a stream stage
    assert set(got) == set(per)
    for k, v in per.items():
        assert got[k] == v if isinstance(v, list) else torch.equal(got[k], v), k
    assert got["task"] == [TASKS[EP_TASK[int(e)]] for e in batch["episode_index"]]
    assert got[CAMERAS[0]].shape == (6, 3, 3, 48, 64)
    assert got["observation.images.wrist"].dtype == torch.float32
    raw = wdspq.to_lerobot(batch, frames="uint8")
    assert raw[CAMERAS[0]].dtype == torch.uint8
    back = wdspq.lerobot_frames_to_float(raw)
    assert torch.equal(back[CAMERAS[0]], got[CAMERAS[0]]) and torch.equal(back["action"], got["action"])


def test_source_episode_index_task_and_lerobot_stats(tmp_path, tokenizer_path):
    root = write_v21(tmp_path / "ds", CODECS["v2.1"])
    table = tmp_path / "t.parquet"
    build_from_lerobot(root, table, episodes=[1, 2], progress=False)
    spec = wdspq.WindowSpec.from_delta_timestamps({"action": [0.0, 0.1]})
    ds = wdspq.ParquetWindowDataset(str(table), spec, tokenizer=tokenizer_path)
    s = wdspq.to_lerobot(ds[LENGTHS[1] + 2])  # row 1 of the table is the source's episode 2
    assert int(s["episode_index"]) == 2 and int(s["frame_index"]) == 2
    assert int(s["index"]) == LENGTHS[0] + LENGTHS[1] + 2 and s["task"] == TASKS[EP_TASK[2]]
    assert int(s["task_index"]) == EP_TASK[2]
    assert s["observation.state"].shape == (4,)  # not listed: one row, unstacked, with a 0-d flag
    assert s["observation.state_is_pad"].shape == () and not s["observation.state_is_pad"]
    # v2.1 has no stats.json: the chosen episodes' statistics pooled as LeRobot pools them
    stats = wdspq.lerobot_stats(table)
    acts = np.concatenate([actions_of(1), actions_of(2)]).astype(np.float64)
    assert torch.allclose(stats["action"]["mean"], torch.tensor(acts.mean(0), dtype=torch.float32))
    assert torch.allclose(stats["action"]["std"], torch.tensor(acts.std(0), dtype=torch.float32))
    assert torch.equal(stats["action"]["max"], torch.tensor(acts.max(0), dtype=torch.float32))
    # Normalize on to_lerobot batches normalises the clamped (padded) rows too, as LeRobot does
    last = wdspq.to_lerobot(ds[len(ds) - 1])
    assert bool(last["action_is_pad"][1])
    norm = wdspq.Normalize(stats, keys=["action"])(last)
    expect = (last["action"] - stats["action"]["mean"]) / stats["action"]["std"]
    assert torch.allclose(norm["action"], expect) and bool((norm["action"][1] != 0).all())
    meta = wdspq.table.read_meta(str(table)).extra["lerobot"]
    assert meta["keys"]["actions"] == "action" and meta["tasks"] == list(TASKS) and meta["fps"] == FPS


# -- jittered and dropped camera frames (the pure window function) -------------------------------------------

def _episode(cam_ts: np.ndarray) -> EpisodeArrays:
    n = 10
    frames = (np.arange(len(cam_ts), dtype=np.uint8)[:, None, None, None] + 1) * np.ones((1, 3, 2, 2), np.uint8)
    return EpisodeArrays(action_ts=np.arange(n) / 10, actions=np.arange(n, dtype=np.float32)[:, None],
                         cameras={"cam": CameraClip(ts=cam_ts, frames=frames)})


def _cut(ep: EpisodeArrays, k: int, **kw) -> dict:
    spec = wdspq.WindowSpec.from_delta_timestamps({"cam": [-0.1, 0.0, 0.1]}, **kw)
    layout = SampleLayout(action_dim=1, action_rate_hz=10.0, cameras=(("cam", 2, 2, 10.0),))
    return cut_window(ep, k, spec.resolve(layout), 0, 0)


def test_jittered_frames_count_within_tolerance_s_and_are_flagged_beyond_it():
    ts = np.arange(10) / 10
    ts[4] += 3e-4  # frame 4 shown 0.3 ms late
    ep = _episode(ts)
    s = _cut(ep, 4)  # default tolerance 1e-4 s: frame 4 is not at 0.4 s
    assert s["cam_mask"].tolist() == [True, False, True]
    assert s["cam"][:, 0, 0, 0].tolist() == [4, 5, 6]  # clamp: the nearest frame, flagged
    assert s["cam_ts"][1] == ts[4]
    s = _cut(ep, 4, boundary="pad")
    assert s["cam_mask"].tolist() == [True, False, True] and s["cam"][1].max() == 0 and s["cam_ts"][1] == 0
    s = _cut(ep, 4, tolerance_s=5e-4)  # within tolerance: the frame is present
    assert s["cam_mask"].all() and s["cam"][:, 0, 0, 0].tolist() == [4, 5, 6]


def test_dropped_frames_are_flagged_and_edges_clamp():
    ts = np.delete(np.arange(10) / 10, 5)  # frame at 0.5 s dropped
    ep = _episode(ts)
    s = _cut(ep, 5)
    assert s["cam_mask"].tolist() == [True, False, True]
    assert s["cam"][:, 0, 0, 0].tolist() == [5, 5, 6]  # 0.4 s and 0.6 s tie: the earlier frame, flagged
    s = _cut(ep, 5, boundary="pad")
    assert s["cam"][1].max() == 0 and s["cam"][2, 0, 0, 0] == 6
    s = _cut(ep, 0)  # before the clip: frame 0, flagged
    assert s["cam_mask"].tolist() == [False, True, True] and s["cam"][0, 0, 0, 0] == 1
    s = _cut(ep, 9)  # after the clip: the last frame, flagged
    assert s["cam_mask"].tolist() == [True, True, False] and s["cam"][2, 0, 0, 0] == 9
    lr = wdspq.to_lerobot({k: torch.from_numpy(v) for k, v in s.items()})
    assert lr["cam_is_pad"].tolist() == [False, False, True] and lr["cam"].dtype == torch.float32


def test_explicit_spec_round_trip_and_errors():
    spec = wdspq.WindowSpec.from_delta_timestamps({"action": [0, 0.1], "obs": [-1.0, -0.5, 0.0]}, stride=2)
    d = spec.to_dict()
    assert d["delta_timestamps"] == {"actions": [0.0, 0.1], "obs": [-1.0, -0.5, 0.0]} and d["boundary"] == "clamp"
    again = wdspq.WindowSpec.from_dict(json.loads(json.dumps(d)))
    assert again == spec and again.digest() == spec.digest()
    assert wdspq.WindowSpec.from_delta_timestamps({"action": [0, 0.1]}, boundary="pad").digest() != \
        wdspq.WindowSpec.from_delta_timestamps({"action": [0, 0.1]}).digest()
    old = wdspq.WindowSpec(acts_length_sec=1.0, obs_length_sec=1.0)
    assert "delta_timestamps" not in old.to_dict() and "boundary" not in old.to_dict()
    with pytest.raises(SpecError, match="acts_length_sec does not apply"):
        wdspq.WindowSpec(acts_length_sec=1.0, delta_timestamps={"action": [0.0]})
    with pytest.raises(SpecError, match="video_frame_offsets"):
        wdspq.WindowSpec(delta_timestamps={"action": [0.0]}, video_frame_offsets=[-1, 0])
    with pytest.raises(SpecError, match="boundary='clamp' applies"):
        wdspq.WindowSpec(acts_length_sec=1.0, obs_length_sec=1.0, boundary="clamp")
    with pytest.raises(SpecError, match="non-empty list"):
        wdspq.WindowSpec.from_delta_timestamps({"action": []})
    layout = SampleLayout(action_dim=1, action_rate_hz=10.0, signals=(("obs", 2, 10.0),))
    with pytest.raises(SpecError, match="not a multiple of the stream's period"):
        wdspq.WindowSpec.from_delta_timestamps({"obs": [0.05]}).resolve(layout)
    with pytest.raises(SpecError, match=r"\['nope'\], which are not streams"):
        wdspq.WindowSpec.from_delta_timestamps({"nope": [0.0]}).resolve(layout)


def test_cli_export_with_delta_timestamps(exported, tmp_path, tokenizer_path):
    import subprocess
    import sys

    _, _, table, shards = exported
    dt = tmp_path / "dt.json"
    dt.write_text(json.dumps(DELTA))
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "wdspq", "export", str(table), str(out), "--delta-timestamps", str(dt),
                        "--samples-per-shard", "9", "--tokenizer", tokenizer_path, "--no-progress"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "manifest.json").read_text())["spec"] == \
        json.loads((shards / "manifest.json").read_text())["spec"]
    r = subprocess.run([sys.executable, "-m", "wdspq", "verify", str(out), "--table", str(table), "--tokenizer",
                        tokenizer_path], capture_output=True, text=True)
    assert r.returncode == 0 and "0 differ" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "wdspq", "show", str(out), "--window", "3", "-o", str(tmp_path / "w.png")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and (tmp_path / "w.png").stat().st_size > 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "wdspq", "export", str(table), str(tmp_path / "x"), "--delta-timestamps",
                        json.dumps(DELTA), "--acts-length-sec", "1"], capture_output=True, text=True)
    assert r.returncode != 0 and "drop --acts-length-sec" in r.stderr and "Traceback" not in r.stderr


def test_imported_dropped_and_jittered_frames_follow_tolerance_s(tmp_path, tokenizer_path):
    """A source video with a dropped frame and one with a late frame: the import keeps each frame's own
    time, and windows take the nearest frame within tolerance_s, else the row is flagged `_is_pad`."""
    n = 5
    root = write_v21(tmp_path / "ds", {c: "libx264" for c in CAMERAS}, Recording(lengths=(n, 3)))
    front, wrist = (root / f"videos/chunk-000/{c}/episode_000000.mp4" for c in CAMERAS)
    wrist.write_bytes(encode_timed([pattern(1, 0, i) for i in (0, 1, 3, 4)], [0.0, 0.1, 0.3, 0.4]))  # 0.2 s dropped
    front.write_bytes(encode_timed([pattern(0, 0, i) for i in range(n)], [0.0, 0.1, 0.23, 0.3, 0.4]))  # 30 ms late
    table = tmp_path / "t.parquet"
    with pytest.warns(FramesOffRowsWarning, match="episode_000000"):
        build_from_lerobot(root, table, progress=False)
    off = wdspq.table.read_meta(str(table)).extra["lerobot"]["frames_off_rows"]
    assert off == {"episode_000000": {CAMERAS[0]: {"frames": n, "rows": n, "frames_on_rows": n - 1},
                                      CAMERAS[1]: {"frames": n - 1, "rows": n, "frames_on_rows": n - 1}}}

    def at(k: int, tol: float) -> dict:
        spec = wdspq.WindowSpec.from_delta_timestamps({CAMERAS[0]: [0.0], CAMERAS[1]: [-0.1, 0.0, 0.1]},
                                                      tolerance_s=tol)
        s = wdspq.to_lerobot(wdspq.ParquetWindowDataset(str(table), spec, tokenizer=tokenizer_path)[k])
        s["shown"] = {c: [read_pattern((s[c][j] * 255).round().to(torch.uint8).numpy())[2]
                          for j in range(len(s[c]))] for c in CAMERAS}
        return s

    s = at(2, 1e-4)  # anchor 0.2 s: no wrist frame there, the front frame is 30 ms late
    assert s[f"{CAMERAS[1]}_is_pad"].tolist() == [False, True, False]
    assert s["shown"][CAMERAS[1]][0] == 1 and s["shown"][CAMERAS[1]][2] == 3
    assert s[f"{CAMERAS[0]}_is_pad"].tolist() == [True] and s["shown"][CAMERAS[0]] == [2]  # clamped: nearest
    s = at(2, 0.05)  # a tolerance wider than the jitter: the late frame is present, the dropped one still not
    assert s[f"{CAMERAS[0]}_is_pad"].tolist() == [False] and s["shown"][CAMERAS[0]] == [2]
    assert s[f"{CAMERAS[1]}_is_pad"].tolist() == [False, True, False]
    s = at(3, 1e-4)  # anchor 0.3 s: every wrist frame on time; frames keep their own order (3 is 4th row)
    assert s[f"{CAMERAS[1]}_is_pad"].tolist() == [True, False, False] and s["shown"][CAMERAS[1]][1:] == [3, 4]
    assert "episode_000001" not in off  # its frames sit on its rows: imported exactly as before


def test_an_episode_that_changes_task_gives_each_anchor_its_rows_task(tmp_path, tokenizer_path):
    """LeRobot takes each frame's task from its row's task_index: an episode listing two tasks, whose rows
    switch task half-way, gives the anchors of each half their own task string and index."""
    n = 6
    root = write_v21(tmp_path / "ds", CODECS["v2.1"], Recording(lengths=(2, n)))
    data = root / "data/chunk-000/episode_000001.parquet"
    t = pq.read_table(data)
    t = t.set_column(t.column_names.index("task_index"), "task_index", pa.array([1] * 3 + [0] * (n - 3), pa.int64()))
    pq.write_table(t, data)
    lines = [json.loads(line) for line in (root / "meta/episodes.jsonl").read_text().splitlines()]
    lines[1]["tasks"] = [TASKS[1], TASKS[0]]
    (root / "meta/episodes.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    table = tmp_path / "t.parquet"
    build_from_lerobot(root, table, progress=False)
    spec = wdspq.WindowSpec.from_delta_timestamps({"action": [0.0, 0.1]})
    ds = wdspq.ParquetWindowDataset(str(table), spec, tokenizer=tokenizer_path)
    got = [wdspq.to_lerobot(ds[2 + i]) for i in range(n)]
    assert [s["task"] for s in got] == [TASKS[1]] * 3 + [TASKS[0]] * (n - 3)
    assert [int(s["task_index"]) for s in got] == [1] * 3 + [0] * (n - 3)
    first = wdspq.to_lerobot(ds[0])  # a one-task episode: unchanged
    assert first["task"] == TASKS[EP_TASK[0]] and int(first["task_index"]) == EP_TASK[0]
    batch = wdspq.to_lerobot(torch.utils.data.default_collate([ds[1], ds[4], ds[5]]))
    assert batch["task"] == [TASKS[0], TASKS[1], TASKS[0]] and batch["task_index"].tolist() == [0, 1, 0]


def test_actions_go_by_row_index_and_frames_are_flagged_past_the_episode():
    """LeRobot's rule: actions (and signals on their clock) at rows `k + round(d * fps)`, so jittered action
    timestamps never pad; cameras by time, but clamped to and flagged outside the episode's span."""
    layout = SampleLayout(action_dim=1, action_rate_hz=10.0, signals=(("obs", 1, 10.0),), cameras=(("cam", 2, 2, 10.0),))
    n = 5

    def cut(action_ts: np.ndarray, cam_ts: np.ndarray, delta: dict, k: int, **kw) -> dict:
        frames = (np.arange(len(cam_ts), dtype=np.uint8)[:, None, None, None] + 1) * np.ones((1, 3, 2, 2), np.uint8)
        vals = np.arange(len(action_ts), dtype=np.float32)[:, None] + 1
        ep = EpisodeArrays(action_ts=action_ts, actions=vals, signals={"obs": (action_ts.copy(), vals * 10)},
                           cameras={"cam": CameraClip(ts=cam_ts, frames=frames)})
        return cut_window(ep, k, wdspq.WindowSpec.from_delta_timestamps(delta, **kw).resolve(layout), 0, 0)

    jittered = np.arange(n) / 10 + np.array([0, 2e-3, -2e-3, 1.5e-3, -1e-3])
    for boundary in ("clamp", "pad"):
        s = cut(jittered, np.arange(n) / 10, {"action": [-0.2, 0.0, 0.1, 0.2, 0.4], "obs": [0.1, 0.3]}, 1, boundary=boundary)
        assert s["actions_mask"].tolist() == [False, True, True, True, False]
        assert s["actions"][:, 0].tolist() == ([1, 2, 3, 4, 5] if boundary == "clamp" else [0, 2, 3, 4, 0])
        assert s["obs_mask"].tolist() == [True, True] and s["obs"][:, 0].tolist() == [30, 50]
    # a video one frame longer than the episode: the frame past the last row is not in the episode
    s = cut(np.arange(n) / 10, np.arange(n + 1) / 10, {"cam": [-0.1, 0.0, 0.1]}, n - 1)
    assert s["cam_mask"].tolist() == [True, True, False] and s["cam"][:, 0, 0, 0].tolist() == [4, 5, 5]
    s = cut(np.arange(n) / 10, np.arange(n + 1) / 10, {"cam": [0.1]}, n - 1, boundary="pad")
    assert s["cam_mask"].tolist() == [False] and s["cam"].max() == 0


def test_explicit_spec_hashes_cli_takes_tolerance_zero_and_one_row_flags_are_kept():
    from wdspq.cli import UsageError, make_parser
    from wdspq.cli.spec_args import spec_from_args

    a = wdspq.WindowSpec.from_delta_timestamps({"action": [0, 0.1], "cam": [0.0]})
    b = wdspq.WindowSpec.from_delta_timestamps({"cam": (0,), "actions": [0.0, 0.1]})
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    assert a.delta_timestamps == {"actions": (0.0, 0.1), "cam": (0.0,)}
    assert a.to_dict()["delta_timestamps"] == {"actions": [0.0, 0.1], "cam": [0.0]}
    args = make_parser().parse_args(["export", "t.parquet", "out", "--delta-timestamps", '{"action": [0.0]}',
                                     "--tolerance-s", "0"])
    assert spec_from_args(args).tolerance_s == 0.0
    with pytest.raises(UsageError, match="seconds >= 0"):
        make_parser().parse_args(["export", "t.parquet", "out", "--tolerance-s", "-1"])
    # a still image and an unlisted camera keep their 0-d masks as `_is_pad` (true: no image, no frame)
    layout = SampleLayout(action_dim=1, action_rate_hz=10.0, cameras=(("cam", 2, 2, 10.0),), images=(("img", 2, 2),))
    ts = np.array([0.0, 0.2])  # no frame at 0.1 s
    ep = EpisodeArrays(action_ts=np.arange(3) / 10, actions=np.zeros((3, 1), np.float32),
                       cameras={"cam": CameraClip(ts=ts, frames=np.ones((2, 3, 2, 2), np.uint8))}, images={"img": None})
    spec = wdspq.WindowSpec.from_delta_timestamps({"action": [0.0]})
    s = wdspq.to_lerobot({k: torch.from_numpy(v) for k, v in cut_window(ep, 1, spec.resolve(layout), 0, 0).items()})
    assert s["img_is_pad"].shape == () and bool(s["img_is_pad"]) and bool(s["cam_is_pad"])
    assert s["action_is_pad"].shape == (1,) and "img_mask" not in s and "cam_mask" not in s


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("num_workers", [0, 2])
def test_to_lerobot_as_a_batch_stage_equals_it_on_the_plain_batches(exported, num_workers):
    _, _, _, shards = exported
    stream = wdspq.ShardStream(str(shards), shuffle=True, seed=1)
    uint8 = functools.partial(wdspq.to_lerobot, frames="uint8")
    plain = [uint8(b) for b in wdspq.StreamLoader(stream, batch_size=7, num_workers=num_workers)]
    loader = wdspq.StreamLoader(stream.map_batch(uint8), batch_size=7, num_workers=num_workers)
    got = list(loader)
    assert len(got) == len(plain) and got[0][CAMERAS[0]].dtype == torch.uint8 and "action_is_pad" in got[0]
    for g, p in zip(got, plain):
        assert set(g) == set(p) and all(g[k] == v if isinstance(v, list) else torch.equal(g[k], v)
                                        for k, v in p.items())
