"""Import speed and size on realistic frames: LeRobot v2.1 / v3.0 (AV1, H.264) and robomimic, side by side.

    MUJOCO_GL=egl .venv/bin/python tools/bench_import.py [--episodes 6] [--seconds 5] [--size 96]

Renders MuJoCo episodes (wdspq build sim's scene, both cameras at 20 fps), writes them in each source
layout (tests/lerobot_fixture.py for LeRobot, at LeRobot's AV1 default crf 30; h5py for robomimic), then
times `build_from_lerobot` / `build_from_robomimic` and prints seconds per 1,000 frames (a frame = one
row, i.e. one image per camera) and the table's bytes against the source's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from lerobot_fixture import CAMERAS, Recording, actions_of, state_of, write_v21, write_v30  # noqa: E402

from wdspq.build import build_from_lerobot, build_from_robomimic  # noqa: E402
from wdspq.build.sim import SimConfig, sim_episode  # noqa: E402
from wdspq.media import decode_video  # noqa: E402


def render(episodes: int, seconds: float, size: int) -> list[list[np.ndarray]]:
    """Per episode, per camera: (n, H, W, 3) frames, both cameras at 20 fps with the same count."""
    cfg = SimConfig(seconds=seconds, video_size=size, camera_fps=(20.0, 20.0))
    out = []
    for e in range(episodes):
        ep = sim_episode(e, cfg)
        cams = [decode_video(ep.cameras[c][0])[0].transpose(0, 2, 3, 1) for c in ("front", "wrist")]
        n = min(len(c) for c in cams)
        out.append([c[:n] for c in cams])
    return out


def size_of(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def write_robomimic(path: Path, frames: list[list[np.ndarray]]) -> None:
    with h5py.File(path, "w") as f:
        f.create_group("data").attrs["env_args"] = json.dumps({"env_name": "Sim", "env_kwargs": {"control_freq": 20}})
        for e, cams in enumerate(frames):
            n = len(cams[0])
            g = f.create_group(f"data/demo_{e}")
            g["actions"] = actions_of(0, n)
            g["obs/joint_pos"] = state_of(0, n)
            g["obs/agentview_image"] = cams[0]
            g["obs/robot0_eye_in_hand_image"] = cams[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--size", type=int, default=96)
    a = ap.parse_args()
    frames = render(a.episodes, a.seconds, a.size)
    lengths = tuple(len(c[0]) for c in frames)
    rec = Recording(lengths=lengths, h=a.size, w=a.size, frame=lambda c, e, i: frames[e][c][i], av1_crf=30)
    rows = sum(lengths)
    print(f"{a.episodes} MuJoCo episodes, {rows} frames x {len(CAMERAS)} cameras at {a.size}x{a.size}")
    print(f"{'source':<34}{'import s':>9}{'s/1k frames':>12}{'source B':>13}{'table B':>13}{'table/src':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        av1 = {c: "libsvtav1" for c in CAMERAS}
        h264 = {c: "libx264" for c in CAMERAS}
        sources = [("LeRobot v2.1, AV1", write_v21(tmp / "v21", av1, rec), "ffv1"),
                   ("LeRobot v2.1, H.264", write_v21(tmp / "v21h", h264, rec), "ffv1"),
                   ("LeRobot v3.0, AV1", write_v30(tmp / "v30", av1, rec), "ffv1"),
                   ("LeRobot v3.0, AV1 -> h264 table", tmp / "v30", "h264")]
        write_robomimic(tmp / "rm.hdf5", frames)
        sources.append(("robomimic (raw uint8 frames)", tmp / "rm.hdf5", "ffv1"))
        for i, (name, src, codec) in enumerate(sources):
            out = tmp / f"t{i}.parquet"
            t0 = time.perf_counter()
            if src.suffix == ".hdf5":
                build_from_robomimic(src, out, video_codec=codec, progress=False)
            else:
                build_from_lerobot(src, out, video_codec=codec, progress=False)
            dt = time.perf_counter() - t0
            s, t = size_of(src), size_of(out)
            print(f"{name:<34}{dt:>9.2f}{dt / rows * 1000:>12.2f}{s:>13,}{t:>13,}{t / s:>10.2f}")


if __name__ == "__main__":
    main()
