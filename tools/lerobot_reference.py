"""Check `wdspq build lerobot` against a dataset written by LeRobot itself (not part of the test suite).

Two steps, two environments (LeRobot 0.3.2 needs its own venv; see docs/importers.md):

    /path/to/lerobot-venv/bin/python tools/lerobot_reference.py write /tmp/lr-ref [--vcodec h264]
    .venv/bin/python tools/lerobot_reference.py check /tmp/lr-ref

With LeRobot 0.4.x (format v3.0) on the path instead, `write` writes a v3.0 dataset. `write` records 3 episodes of different lengths, 2 tasks and 2 cameras with LeRobotDataset.create /
add_frame / save_episode (format v2.1, AV1 video by default), every frame carrying its camera, episode and
frame number (tests/lerobot_fixture.py draws them). `check` imports the folder and compares every action,
state, timestamp, task and frame with that ground truth and with PyAV's decode of LeRobot's files; it
prints the import time per 1,000 frames and the table's bytes against the source folder's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from lerobot_fixture import (  # noqa: E402
    CAMERAS,
    EP_TASK,
    FPS,
    LENGTHS,
    TASKS,
    H,
    W,
    actions_of,
    pattern,
    read_pattern,
    state_of,
)


def write(root: Path, vcodec: str) -> None:
    import inspect

    from lerobot.datasets import lerobot_dataset, video_utils
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    encode = video_utils.encode_video_frames
    lerobot_dataset.encode_video_frames = lambda *a, **k: encode(*a, **{**k, "vcodec": vcodec})
    features = {"action": {"dtype": "float32", "shape": (6,), "names": [f"a{j}" for j in range(6)]},
                "observation.state": {"dtype": "float32", "shape": (4,), "names": [f"q{j}" for j in range(4)]}}
    for cam in CAMERAS:
        features[cam] = {"dtype": "video", "shape": (H, W, 3), "names": ["height", "width", "channels"]}
    ds = LeRobotDataset.create(repo_id="wdspq/reference", fps=FPS, features=features, root=root, robot_type="test_arm")
    for ep, n in enumerate(LENGTHS):
        acts, state = actions_of(ep), state_of(ep)
        for i in range(n):
            frame = {"action": acts[i], "observation.state": state[i]}
            frame.update({cam: pattern(c, ep, i) for c, cam in enumerate(CAMERAS)})
            if "task" in inspect.signature(ds.add_frame).parameters:  # LeRobot 0.3.x (format v2.1)
                ds.add_frame(frame, task=TASKS[EP_TASK[ep]])
            else:  # LeRobot 0.4.x (format v3.0): the task is a key of the frame
                ds.add_frame({**frame, "task": TASKS[EP_TASK[ep]]})
        ds.save_episode()
    if hasattr(ds, "finalize"):  # v3.0 writers keep their parquet files open until finalize()
        ds.finalize()
    print(f"wrote {root} (LeRobot, codebase {ds.meta.info['codebase_version']}, {vcodec})")


def check(root: Path) -> None:
    import av
    import pyarrow.parquet as pq

    from wdspq.build import build_from_lerobot
    from wdspq.media import decode_video

    out = root.parent / f"{root.name}.parquet"
    t0 = time.perf_counter()
    meta = build_from_lerobot(root, out, progress=False, overwrite=True)
    dt = time.perf_counter() - t0
    rows = pq.read_table(out).to_pylist()
    refs, codec = {}, "?"
    for cam in CAMERAS:  # every source file of the camera, decoded front to back, in episode order
        files = sorted(root.glob(f"videos/chunk-*/{cam}/episode_*.mp4")) or sorted(root.glob(f"videos/{cam}/chunk-*/file-*.mp4"))
        decoded = []
        for src in files:
            with av.open(str(src)) as cont:
                codec = cont.streams.video[0].codec_context.name
                decoded += [f.to_ndarray(format="rgb24") for f in cont.decode(cont.streams.video[0])]
        refs[cam] = np.stack(decoded)
    assert [s.name for s in meta.streams] == ["actions", "observation.state", *CAMERAS], meta.streams
    for ep, row in enumerate(rows):
        n = LENGTHS[ep]
        assert np.array_equal(np.array(row["actions"], np.float32), actions_of(ep)), ep
        assert np.array_equal(np.array(row["observation.state"], np.float32), state_of(ep)), ep
        assert np.array_equal(np.array(row["action_ts"]), np.arange(n) / FPS), ep
        assert row["text"] == TASKS[EP_TASK[ep]], (ep, row["text"])
        for c, cam in enumerate(CAMERAS):
            frames, _ = decode_video(row[cam])
            assert [read_pattern(f) for f in frames] == [(c, ep, i) for i in range(n)], (ep, cam)
            ref = refs[cam][sum(LENGTHS[:ep]):sum(LENGTHS[:ep + 1])]
            assert np.array_equal(frames.transpose(0, 2, 3, 1), ref), (ep, cam)
    frames_total = sum(LENGTHS)
    src_bytes = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    print(f"{root}: LeRobot {meta.extra['lerobot']['codebase_version']}, {len(rows)} episodes, {frames_total} frames x {len(CAMERAS)} cameras ({codec}) match the ground truth "
          f"and PyAV's decode of LeRobot's files")
    print(f"import: {dt:.2f} s = {dt / frames_total * 1000:.2f} s per 1,000 frames; table {out.stat().st_size:,} B, "
          f"source folder {src_bytes:,} B ({out.stat().st_size / src_bytes:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("write", "check"))
    ap.add_argument("root", type=Path, help="dataset folder (write: must not exist)")
    ap.add_argument("--vcodec", default="libsvtav1", help="write: LeRobot's video codec (default libsvtav1 = AV1)")
    a = ap.parse_args()
    write(a.root, a.vcodec) if a.step == "write" else check(a.root)


if __name__ == "__main__":
    main()
