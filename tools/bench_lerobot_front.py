"""LeRobot-shaped batches from wdspq shards vs decoding the source videos per sample (LeRobot's way).

    PYTHONPATH=$PWD .venv/bin/python tools/bench_lerobot_front.py [--episodes 10] [--frames 200] [--size 96]

Writes a LeRobot v2.1 dataset (tests/lerobot_fixture.py: two AV1 cameras, LeRobot's default codec),
imports it (`build_from_lerobot`), exports it with a Diffusion-Policy-like `delta_timestamps` and times:

- wdspq: `StreamLoader` batches + `to_lerobot(batch, frames="uint8")` + `lerobot_frames_to_float` (what a
  training loop does, the float conversion on the CPU here; on a GPU it happens after `.to(device)`),
  and the plain stream without `to_lerobot` (its cost is the difference);
- source videos: a map-style dataset that, per sample and camera, opens the episode's mp4 with PyAV,
  seeks and decodes the frames at the clamped offsets, as LeRobot's `__getitem__` does (LeRobot itself
  is not installed here), actions and state from memory, in a DataLoader.
With `--stages`, only the stream with `to_lerobot` as a batch stage (`stream.map_batch`) vs a per-sample
stage (`stream.map`) vs plain. Samples/s, one run each; LeRobot-format datasets are AV1, so most of the baseline's time is AV1 decoding.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from lerobot_fixture import CAMERAS, FPS, Recording, actions_of, pattern, state_of, write_v21  # noqa: E402

import wdspq  # noqa: E402
from wdspq.build import build_from_lerobot  # noqa: E402

DELTA = {"observation.state": [-0.1, 0.0], CAMERAS[0]: [-0.1, 0.0], CAMERAS[1]: [-0.1, 0.0],
         "action": [round(-0.1 + i / FPS, 6) for i in range(16)]}


class SourceVideos(torch.utils.data.Dataset):
    """LeRobot's rule on the source dataset: clamped rows, `_is_pad`, frames decoded per sample with PyAV."""

    def __init__(self, root: Path, lengths: tuple[int, ...]) -> None:
        self.root, self.lengths = root, lengths
        self.starts = np.concatenate([[0], np.cumsum(lengths)])
        self.values = {"action": [actions_of(e % 3, n) for e, n in enumerate(lengths)],
                       "observation.state": [state_of(e % 3, n) for e, n in enumerate(lengths)]}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _frames(self, cam: str, ep: int, rows: np.ndarray) -> torch.Tensor:
        path = self.root / f"videos/chunk-000/{cam}/episode_{ep:06d}.mp4"
        want = {int(r) for r in rows}
        got: dict[int, np.ndarray] = {}
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            c.seek(int(min(want) / FPS / s.time_base), stream=s, backward=True, any_frame=False)
            for f in c.decode(s):
                j = int(round(float(f.pts * s.time_base) * FPS))
                if j in want:
                    got[j] = f.to_ndarray(format="rgb24")
                if j >= max(want):
                    break
        chw = np.stack([got[int(r)] for r in rows]).transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(chw)).to(torch.float32) / 255.0

    def __getitem__(self, w: int) -> dict:
        ep = int(np.searchsorted(self.starts, w, side="right") - 1)
        i, n = w - int(self.starts[ep]), self.lengths[ep]
        item: dict = {}
        for key, deltas in DELTA.items():
            shifted = np.array([i + round(d * FPS) for d in deltas])
            rows = np.clip(shifted, 0, n - 1)
            item[f"{key}_is_pad"] = torch.from_numpy((shifted < 0) | (shifted >= n))
            item[key] = self._frames(key, ep, rows) if key in CAMERAS else torch.from_numpy(self.values[key][ep][rows])
        item.update(episode_index=torch.tensor(ep), frame_index=torch.tensor(i), timestamp=torch.tensor(i / FPS))
        return item


def _rate(batches, limit: int) -> float:
    n, t = 0, time.perf_counter()
    for b in batches:
        n += len(b["frame_index"] if "frame_index" in b else b["window_index"])
        if n >= limit:
            break
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--frames", type=int, default=200, help="frames per episode (at most 255)")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--baseline-samples", type=int, default=320)
    ap.add_argument("--stages", action="store_true",
                    help="only compare, with 0 and 2 workers: the plain StreamLoader, stream.map_batch(to_lerobot) "
                         "and stream.map(to_lerobot) (frames='uint8')")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-lerobot-"))
    lengths = (a.frames,) * a.episodes
    rec = Recording(lengths=lengths, h=a.size, w=a.size, frame=lambda c, e, i: pattern(c, e % 3, i) if a.size >= 64
                    else np.zeros((a.size, a.size, 3), np.uint8))
    root = write_v21(tmp / "ds", {c: "libsvtav1" for c in CAMERAS}, rec)
    table = tmp / "table.parquet"
    build_from_lerobot(root, table, progress=False)
    spec = wdspq.WindowSpec.from_delta_timestamps(DELTA)
    wdspq.export_shards(table, tmp / "shards", spec, samples_per_shard=200, progress=False)
    total = sum(lengths)
    print(f"{a.episodes} episodes x {a.frames} frames, 2 AV1 cameras {a.size}x{a.size}, delta_timestamps: "
          f"state 2, each camera 2, action 16; batch {a.batch}; {tmp}")

    def lerobot_batches(loader, to_float: bool):
        for b in loader:
            b = wdspq.to_lerobot(b, frames="uint8")
            yield wdspq.lerobot_frames_to_float(b) if to_float else b

    if a.stages:
        uint8 = functools.partial(wdspq.to_lerobot, frames="uint8")
        for workers in (0, 2):
            stream = wdspq.ShardStream(str(tmp / "shards"), shuffle=True, seed=0)
            rates = [_rate(wdspq.StreamLoader(s, batch_size=a.batch, num_workers=workers), total)
                     for s in (stream, stream.map_batch(uint8), stream.map(uint8))]
            print(f"StreamLoader w{workers}: plain {rates[0]:,.0f} samples/s; map_batch(to_lerobot) {rates[1]:,.0f}; "
                  f"map(to_lerobot) {rates[2]:,.0f}")
        return
    for workers in (0, 2):
        stream = wdspq.ShardStream(str(tmp / "shards"), shuffle=True, seed=0)
        rates = [_rate(wdspq.StreamLoader(stream, batch_size=a.batch, num_workers=workers), total)]
        for to_float in (False, True):
            loader = wdspq.StreamLoader(stream, batch_size=a.batch, num_workers=workers)
            rates.append(_rate(lerobot_batches(loader, to_float), total))
        print(f"wdspq StreamLoader w{workers}: plain {rates[0]:,.0f} samples/s; + to_lerobot(frames='uint8') "
              f"{rates[1]:,.0f}; + frames to float32 on the CPU {rates[2]:,.0f}")
    src = SourceVideos(root, lengths)
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(src, batch_size=a.batch, shuffle=True, num_workers=workers,
                                             generator=torch.Generator().manual_seed(0))
        print(f"source AV1 videos decoded per sample (PyAV), DataLoader w{workers}: "
              f"{_rate(loader, a.baseline_samples):,.0f} samples/s")


if __name__ == "__main__":
    main()
