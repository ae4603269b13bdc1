"""Compare `wdspq.to_lerobot` batches with LeRobot's own `LeRobotDataset.__getitem__` (not part of the test suite).

Two steps, two environments (LeRobot needs its own venv, docs/importers.md):

    /path/to/lerobot-venv/bin/python tools/lerobot_front_check.py items DATASET /tmp/items.npz [--rate]
    .venv/bin/python tools/lerobot_front_check.py front DATASET /tmp/items.npz

`items` loads the LeRobot dataset folder with `LeRobotDataset(root=..., delta_timestamps=DELTA)` and saves
every item (all frames of all episodes); `--rate` also times LeRobot's DataLoader. LeRobot 0.3.x imports
torchvision, whose registry wheels do not import beside the CPU torch here: this step stubs torchvision
out and decodes video with PyAV the way torchvision's `pyav` path does (seek to the first timestamp,
decode to the last, take the closest frames, check `tolerance_s`). `front` imports the folder with
`wdspq build lerobot`, exports it with the same `delta_timestamps`, streams it, applies `to_lerobot`
and compares every key of every item.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

CAMS = ("observation.images.front", "observation.images.wrist")
DELTA = {"observation.state": [-0.2, -0.1, 0.0], CAMS[0]: [-0.1, 0.0, 0.3], CAMS[1]: [-0.3, 0.0],
         "action": [round(-0.1 + i / 10, 6) for i in range(16)]}


class _StubTorchvision(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):  # noqa: ANN001, ANN201
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):  # noqa: ANN001, ANN201
        m = mock.MagicMock(name=spec.name)
        m.__path__, m.__spec__ = [], spec
        return m

    def exec_module(self, module) -> None:  # noqa: ANN001
        pass


def _decode_pyav(video_path, timestamps, tolerance_s, backend=None, log_loaded_timestamps=False):  # noqa: ANN001, ANN201
    """torchvision's `pyav` decode path as LeRobot 0.3.x calls it (closest frames, tolerance checked)."""
    import av
    import torch

    first, last = min(timestamps), max(timestamps)
    frames, ts = [], []
    with av.open(str(video_path)) as c:
        s = c.streams.video[0]
        c.seek(int(first / s.time_base), stream=s, backward=True, any_frame=False)
        for f in c.decode(s):
            t = float(f.pts * s.time_base)
            frames.append(torch.from_numpy(f.to_ndarray(format="rgb24")).permute(2, 0, 1))
            ts.append(t)
            if t >= last:
                break
    dist = torch.cdist(torch.tensor(timestamps)[:, None], torch.tensor(ts)[:, None], p=1)
    mn, idx = dist.min(1)
    if not (mn < tolerance_s).all():
        raise RuntimeError(f"{video_path}: frames at {timestamps} not within {tolerance_s} s of a decoded frame")
    return torch.stack([frames[i] for i in idx]).type(torch.float32) / 255


def items(root: Path, out: Path, rate: bool) -> None:
    sys.meta_path.insert(0, _StubTorchvision())
    import torch
    from lerobot.datasets import lerobot_dataset, video_utils

    lerobot_dataset.decode_video_frames = video_utils.decode_video_frames = _decode_pyav
    ds = lerobot_dataset.LeRobotDataset("wdspq/check", root=root, delta_timestamps=DELTA, video_backend="pyav")
    saved: dict[str, list] = {}
    for i in range(len(ds)):
        for k, v in ds[i].items():
            saved.setdefault(k, []).append(v.numpy() if isinstance(v, torch.Tensor) else np.array(v))
    np.savez(out, **{k: np.stack(v) for k, v in saved.items()})
    print(f"{root}: {len(ds)} LeRobot items saved to {out}")
    if rate:
        for w in (0, 2):
            dl = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True, num_workers=w,
                                             generator=torch.Generator().manual_seed(0))
            n, t = 0, None
            for b in dl:
                t = t or time.perf_counter()  # from the first batch on (LeRobot's first access builds caches)
                n += len(b["index"])
                if n >= 640:
                    break
            print(f"LeRobot LeRobotDataset + DataLoader w{w}: {(n - 32) / (time.perf_counter() - t):,.0f} samples/s")


def front(root: Path, items_path: Path) -> None:
    import wdspq
    from wdspq.build import build_from_lerobot

    tmp = Path(tempfile.mkdtemp(prefix="lerobot-front-"))
    build_from_lerobot(root, tmp / "t.parquet", progress=False)
    spec = wdspq.WindowSpec.from_delta_timestamps(DELTA)
    wdspq.export_shards(tmp / "t.parquet", tmp / "shards", spec, samples_per_shard=100, progress=False)
    ref = dict(np.load(items_path))
    got = {int(s["index"]): wdspq.to_lerobot(s) for s in wdspq.ShardStream(str(tmp / "shards"), shuffle=False)}
    assert sorted(got) == ref["index"].tolist(), "the items differ in their global indices"
    keys = [k for k in ref if k not in ("task", "next.done")]
    worst = 0.0
    for j, idx in enumerate(ref["index"].tolist()):
        g = got[idx]
        assert g["task"] == str(ref["task"][j]), (idx, g["task"], ref["task"][j])
        for k in keys:
            a, b = g[k].numpy(), ref[k][j]
            if k in CAMS:  # two PyAV builds may differ by the AV1 decoder's rounding; report it
                worst = max(worst, float(np.abs(a - b).max()))
                continue
            assert a.shape == b.shape and np.array_equal(a, b.astype(a.dtype)), (idx, k, a, b)
    print(f"{len(got)} items: every key of every wdspq to_lerobot sample equals LeRobot's __getitem__ "
          f"(frames: largest difference {worst:.4g}); {sorted(set(got[0]) - set(keys))} are wdspq's extras or 'task'")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("items", "front"))
    ap.add_argument("root", type=Path, help="a LeRobot dataset folder (v2.1 for LeRobot 0.3.x)")
    ap.add_argument("items", type=Path, help="the .npz of LeRobot's items")
    ap.add_argument("--rate", action="store_true", help="items: also time LeRobot's DataLoader")
    a = ap.parse_args()
    items(a.root, a.items, a.rate) if a.step == "items" else front(a.root, a.items)


if __name__ == "__main__":
    main()
