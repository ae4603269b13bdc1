"""Write small LeRobot datasets (codebase v2.1 and v3.0) in LeRobot's on-disk layouts, with known ground truth.

Every frame carries its camera, episode and frame number as 8x8 black/white blocks that survive lossy
AV1/H.264 coding (`read_pattern` decodes them), so a test can check each imported frame without
trusting the importer's own decoder. Written with pyarrow and PyAV only (LeRobot itself is not needed).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FPS = 10
H, W = 48, 64
LENGTHS = (14, 9, 11)
TASKS = ("pick up the red cube", "stack the blue block on the green one")
EP_TASK = (0, 1, 0)
CAMERAS = ("observation.images.front", "observation.images.wrist")
ACTION_DIM, STATE_DIM = 6, 4


def pattern(cam: int, ep: int, i: int) -> np.ndarray:
    """(H, W, 3) uint8: a textured background with rows of 8x8 blocks holding i, ep and cam in binary."""
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([(xx * 3 + 40 * cam) % 256, (yy * 4 + 7 * i) % 256, np.full_like(xx, 90 + 120 * cam)], -1)
    img = (img // 2).astype(np.uint8)  # keep the texture dim so the blocks stand out
    for row, value in enumerate((i, ep, cam + 1)):
        for bit in range(8):
            img[row * 8:(row + 1) * 8, bit * 8:(bit + 1) * 8] = 255 if (value >> bit) & 1 else 0
    return img


def read_pattern(frame: np.ndarray) -> tuple[int, int, int]:
    """(cam, ep, i) from an (H, W, 3) or (3, H, W) frame drawn by `pattern` (after lossy coding)."""
    if frame.shape[0] == 3:
        frame = frame.transpose(1, 2, 0)
    vals = []
    for row in range(3):
        v = 0
        for bit in range(8):
            block = frame[row * 8 + 2:(row + 1) * 8 - 2, bit * 8 + 2:(bit + 1) * 8 - 2].astype(float)
            v |= int(block.mean() > 128) << bit
        vals.append(v)
    i, ep, cam1 = vals
    return cam1 - 1, ep, i


def actions_of(ep: int, n: int | None = None) -> np.ndarray:
    n = LENGTHS[ep] if n is None else n
    return (ep * 100 + np.arange(n)[:, None] + np.arange(ACTION_DIM)[None] / 8).astype(np.float32)


def state_of(ep: int, n: int | None = None) -> np.ndarray:
    n = LENGTHS[ep] if n is None else n
    return (-ep * 10 - np.arange(n)[:, None] * 0.5 + np.arange(STATE_DIM)[None] / 4).astype(np.float32)


def episode_stats(ep: int, n: int) -> dict:
    """LeRobot v2.1's per-episode statistics (meta/episodes_stats.jsonl) of `action` and `observation.state`."""
    out = {}
    for key, v in (("action", actions_of(ep, n)), ("observation.state", state_of(ep, n))):
        v = v.astype(np.float64)
        out[key] = {"mean": v.mean(0).tolist(), "std": v.std(0).tolist(), "min": v.min(0).tolist(),
                    "max": v.max(0).tolist(), "count": [n]}
    return out


@dataclass(frozen=True)
class Recording:
    """What the writers record: episode lengths, frame size, and the frame of (camera, episode, i)."""

    lengths: tuple[int, ...] = LENGTHS
    h: int = H
    w: int = W
    frame: Callable[[int, int, int], np.ndarray] = pattern
    av1_crf: int = 25  # LeRobot's own default is 30


def encode(frames: list[np.ndarray], codec: str, rec: Recording = Recording()) -> bytes:
    """An mp4 of these frames at FPS with the codec LeRobot would use (libsvtav1 = AV1, libx264 = H.264)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream(codec, rate=Fraction(FPS, 1))
        s.width, s.height, s.pix_fmt = rec.w, rec.h, "yuv420p"
        s.options = {"crf": "20", "g": "2"} if codec == "libx264" else {"crf": str(rec.av1_crf), "g": "2", "preset": "12"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return buf.getvalue()


def encode_timed(frames: list[np.ndarray], times: list[float], rec: Recording = Recording()) -> bytes:
    """An H.264 mp4 whose frame k is shown at `times[k]` seconds (1 ms time base): dropped or jittered frames."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=Fraction(FPS, 1))
        s.width, s.height, s.pix_fmt = rec.w, rec.h, "yuv420p"
        s.time_base = s.codec_context.time_base = Fraction(1, 1000)
        s.options = {"crf": "20", "g": "2"}
        for f, t in zip(frames, times):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts, vf.time_base = round(t * 1000), Fraction(1, 1000)
            for p in s.encode(vf):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return buf.getvalue()


def _rows(eps: list[int], global_start: dict[int, int], rec: Recording) -> pa.Table:
    cols: dict[str, list] = {k: [] for k in ("action", "observation.state", "timestamp", "frame_index",
                                             "episode_index", "index", "task_index", "next.done")}
    for ep in eps:
        n = rec.lengths[ep]
        cols["action"] += actions_of(ep, n).tolist()
        cols["observation.state"] += state_of(ep, n).tolist()
        cols["timestamp"] += list(np.float32(np.arange(n) / FPS))
        cols["frame_index"] += list(range(n))
        cols["episode_index"] += [ep] * n
        cols["index"] += list(range(global_start[ep], global_start[ep] + n))
        cols["task_index"] += [EP_TASK[ep % 3]] * n
        cols["next.done"] += [j == n - 1 for j in range(n)]
    types = {"action": pa.list_(pa.float32()), "observation.state": pa.list_(pa.float32()), "timestamp": pa.float32(),
             "frame_index": pa.int64(), "episode_index": pa.int64(), "index": pa.int64(), "task_index": pa.int64(),
             "next.done": pa.bool_()}
    return pa.table({k: pa.array(v, type=types[k]) for k, v in cols.items()})


def _features(codecs: dict[str, str], rec: Recording) -> dict:
    feats = {
        "action": {"dtype": "float32", "shape": [ACTION_DIM], "names": [f"a{j}" for j in range(ACTION_DIM)]},
        "observation.state": {"dtype": "float32", "shape": [STATE_DIM], "names": {"motors": [f"q{j}" for j in range(STATE_DIM)]}},
        "next.done": {"dtype": "bool", "shape": [1], "names": None},
    }
    for cam in CAMERAS:
        feats[cam] = {"dtype": "video", "shape": [rec.h, rec.w, 3], "names": ["height", "width", "channels"],
                      "info": {"video.fps": FPS, "video.codec": "av1" if codecs[cam] == "libsvtav1" else "h264",
                               "video.pix_fmt": "yuv420p"}}
    for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        feats[k] = {"dtype": "float32" if k == "timestamp" else "int64", "shape": [1], "names": None}
    return feats


def _global_starts(rec: Recording) -> dict[int, int]:
    return {ep: int(sum(rec.lengths[:ep])) for ep in range(len(rec.lengths))}


def write_v21(root: Path, codecs: dict[str, str], rec: Recording = Recording()) -> Path:
    """A v2.1 dataset: one parquet and one mp4 per episode and camera; splits train 0:2, valid 2:3."""
    root.mkdir(parents=True)
    (root / "meta").mkdir()
    info = {"codebase_version": "v2.1", "robot_type": "test_arm", "fps": FPS, "chunks_size": 1000,
            "total_episodes": len(rec.lengths), "total_frames": sum(rec.lengths), "total_tasks": len(TASKS),
            "splits": {"train": "0:2", "valid": "2:3"},
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
            "features": _features(codecs, rec)}
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    (root / "meta" / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(TASKS)))
    (root / "meta" / "episodes.jsonl").write_text("".join(
        json.dumps({"episode_index": ep, "tasks": [TASKS[EP_TASK[ep % 3]]], "length": n}) + "\n" for ep, n in enumerate(rec.lengths)))
    (root / "meta" / "episodes_stats.jsonl").write_text("".join(
        json.dumps({"episode_index": ep, "stats": episode_stats(ep, n)}) + "\n" for ep, n in enumerate(rec.lengths)))
    starts = _global_starts(rec)
    for ep, n in enumerate(rec.lengths):
        p = root / f"data/chunk-000/episode_{ep:06d}.parquet"
        p.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_rows([ep], starts, rec), p)
        for c, cam in enumerate(CAMERAS):
            v = root / f"videos/chunk-000/{cam}/episode_{ep:06d}.mp4"
            v.parent.mkdir(parents=True, exist_ok=True)
            v.write_bytes(encode([rec.frame(c, ep, i) for i in range(n)], codecs[cam], rec))
    return root


# v3.0: camera -> video files, each a list of the episodes it holds, in order
V3_FILES = {CAMERAS[0]: [[0, 1, 2]], CAMERAS[1]: [[0, 1], [2]]}


def write_v30(root: Path, codecs: dict[str, str], rec: Recording = Recording()) -> Path:
    """A v3.0 dataset: all rows in one data file; the front camera in one mp4, the wrist camera in two."""
    root.mkdir(parents=True)
    (root / "meta").mkdir()
    info = {"codebase_version": "v3.0", "robot_type": "test_arm", "fps": FPS, "chunks_size": 1000,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 200,
            "total_episodes": len(rec.lengths), "total_frames": sum(rec.lengths), "total_tasks": len(TASKS),
            "splits": {"train": "0:3"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": _features(codecs, rec)}
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    (root / "meta" / "stats.json").write_text(json.dumps({"action": {"mean": [0.0] * ACTION_DIM}}))
    pq.write_table(pa.table({"task_index": pa.array(range(len(TASKS)), pa.int64()), "task": pa.array(TASKS)}),
                   root / "meta" / "tasks.parquet")
    starts = _global_starts(rec)
    data = root / "data/chunk-000/file-000.parquet"
    data.parent.mkdir(parents=True)
    pq.write_table(_rows(list(range(len(rec.lengths))), starts, rec), data)
    ep_rows = [{"episode_index": ep, "tasks": [TASKS[EP_TASK[ep % 3]]], "length": n, "data/chunk_index": 0,
                "data/file_index": 0, "dataset_from_index": starts[ep], "dataset_to_index": starts[ep] + n,
                "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0} for ep, n in enumerate(rec.lengths)]
    n_eps = len(rec.lengths)
    files = V3_FILES if n_eps == len(LENGTHS) else {cam: [list(range(n_eps))] for cam in CAMERAS}
    for c, cam in enumerate(CAMERAS):
        for file_index, eps in enumerate(files[cam]):
            frames, t = [], 0.0
            for ep in eps:
                ep_rows[ep].update({f"videos/{cam}/chunk_index": 0, f"videos/{cam}/file_index": file_index,
                                    f"videos/{cam}/from_timestamp": t, f"videos/{cam}/to_timestamp": t + rec.lengths[ep] / FPS})
                frames += [rec.frame(c, ep, i) for i in range(rec.lengths[ep])]
                t += rec.lengths[ep] / FPS
            v = root / f"videos/{cam}/chunk-000/file-{file_index:03d}.mp4"
            v.parent.mkdir(parents=True, exist_ok=True)
            v.write_bytes(encode(frames, codecs[cam], rec))
    ep_file = root / "meta/episodes/chunk-000/file-000.parquet"
    ep_file.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ep_rows), ep_file)
    return root


def decode_all(path: Path) -> np.ndarray:
    """Every frame of an mp4, (N, H, W, 3) uint8, decoded with PyAV front to back (the reference)."""
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])
