#!/usr/bin/env python
"""Shard encodings compared on realistic camera frames: bytes/sample, encode and decode cost, error.

Frames are rendered headless with MuJoCo (`pip install -e '.[sim]'`, `MUJOCO_GL=egl`): the front
camera of `wdspq build sim`'s scene (a textured table, a two-link arm, falling objects, lit, no
shadows) at 96x96 and 224x224. Each sample holds 3 consecutive frames (like frame offsets [-2,-1,0] at 20 Hz) plus the
numeric keys of a 1 s window (100 x 7 actions, 100 x 14 observations, masks, tokens), encoded and
decoded with wdspq's own `SampleCodec`, one thread, as the exporter and the DataLoader workers do.
Without MuJoCo it says so and uses frames of the synthetic builder (flat: far too optimistic).
Encodings with the export's tuning (delta filter, dictionary: `shardfmt.tuning`) are tuned on samples
of episodes 1 and 2, as an export tunes on probe episodes, and measured on episode 0's samples.

    MUJOCO_GL=egl .venv/bin/python tools/bench_codecs.py [--samples 40] [--sizes 96,224]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MUJOCO_GL", "egl")

from wdspq.shardfmt import Encoding, SampleCodec, key_of, sample_tar  # noqa: E402
from wdspq.shardfmt.tuning import train_codec  # noqa: E402


def mujoco_frames(n: int, size: int, episode: int = 0) -> np.ndarray | None:
    """n consecutive front-camera frames (n, 3, size, size) uint8 of `wdspq build sim`'s scene, or None."""
    try:
        import mujoco  # noqa: F401
    except ImportError:
        return None
    from wdspq.build.sim import SimConfig, sim_episode
    from wdspq.media import decode_video

    cfg = SimConfig(seconds=n / 20.0 + 0.1, video_size=size)
    clip, _ = sim_episode(episode, cfg).cameras["front"]
    frames, _ = decode_video(clip)
    return np.ascontiguousarray(frames[:n])


def synthetic_frames(n: int, size: int, episode: int = 0) -> np.ndarray:
    from wdspq.build.synthetic import SyntheticConfig, make_episode
    from wdspq.media import decode_video

    cfg = SyntheticConfig(seconds=max(2.0, n / 20 + 1), video_size=size)
    clip, _ = make_episode(episode, cfg).cameras["frames"]
    frames, _ = decode_video(clip)
    return np.ascontiguousarray(frames[:n].transpose(0, 3, 1, 2)) if frames.shape[-1] == 3 else frames[:n]


def schema(size: int) -> dict:
    return {"actions": {"dtype": "float32", "shape": [100, 7]}, "actions_mask": {"dtype": "bool", "shape": [100]},
            "observations": {"dtype": "float32", "shape": [100, 14]},
            "observations_mask": {"dtype": "bool", "shape": [100]},
            "front": {"dtype": "uint8", "shape": [3, 3, size, size]}, "front_mask": {"dtype": "bool", "shape": [3]},
            "front_ts": {"dtype": "float64", "shape": [3]},
            "input_ids": {"dtype": "int64", "shape": [32]}, "attention_mask": {"dtype": "int64", "shape": [32]},
            "window_index": {"dtype": "int64", "shape": []}, "episode_index": {"dtype": "int64", "shape": []},
            "anchor_index": {"dtype": "int64", "shape": []}, "t0": {"dtype": "float64", "shape": []}}


def samples(frames: np.ndarray, size: int, count: int, episode: int = 0) -> list[dict]:
    rng = np.random.default_rng(episode)
    t = np.linspace(0, 1, 100, dtype=np.float32)[:, None]
    out = []
    for i in range(count):
        j = 2 + i * (len(frames) - 3) // max(count - 1, 1)
        out.append({"actions": (np.sin(t * 3 + np.arange(7) + i) * 0.5).astype(np.float32),
                    "actions_mask": np.ones(100, bool),
                    "observations": (np.cos(t * 2 + np.arange(14)) + rng.normal(0, .01, (100, 14))).astype(np.float32),
                    "observations_mask": np.ones(100, bool), "front": frames[j - 2 : j + 1],
                    "front_mask": np.ones(3, bool), "front_ts": np.array([j - 2, j - 1, j]) * 0.05,
                    "input_ids": np.r_[101, rng.integers(1000, 5000, 8), 102, np.zeros(22)].astype(np.int64),
                    "attention_mask": np.r_[np.ones(10), np.zeros(22)].astype(np.int64),
                    "window_index": np.int64(i), "episode_index": np.int64(episode), "anchor_index": np.int64(i),
                    "t0": np.float64(i * 0.04)})
    return out


PLAIN = {"delta": False, "dictionary": False}
ENCODINGS = [
    Encoding("raw", "none"), Encoding("raw", "zstd", level=1, **PLAIN), Encoding("raw", "zstd", level=3, **PLAIN),
    Encoding("raw", "zstd", level=3, dictionary=False), Encoding("raw", "zstd", level=3),
    Encoding("png", "zstd", **PLAIN), Encoding("webp", "zstd", **PLAIN),
    Encoding("jpeg", "zstd", quality=95, subsampling="444", **PLAIN),
    Encoding("jpeg", "zstd", quality=95, subsampling="420", **PLAIN),
    Encoding("jpeg", "zstd", quality=85, subsampling="444", **PLAIN),
]


def label(codec: SampleCodec) -> str:
    """What the codec does, with the tuning it actually got."""
    e = codec.encoding
    frames = {"raw": "raw frames", "png": "PNG frames", "webp": "WebP-lossless frames"}.get(
        e.frames, f"JPEG q{e.quality} {'4:4:4' if e.subsampling == '444' else '4:2:0'}")
    if e.compression != "zstd":
        return f"{frames}, raw record"
    tuned = (["delta " + "+".join(codec.delta_keys)] if codec.delta_keys else []) + (["dict"] if codec.dictionary else [])
    return f"{frames}, zstd-{e.level}" + (f" ({', '.join(tuned)})" if tuned else "")


def measure(enc: Encoding, size: int, batch: list[dict], train: list[tuple[int, dict]]) -> dict:
    t = time.perf_counter()
    codec = train_codec(schema(size), enc, train)
    tune_s = time.perf_counter() - t
    t = time.perf_counter()
    encoded = [codec.encode(s) for s in batch]
    enc_ms = (time.perf_counter() - t) * 1e3 / len(batch)
    sizes = [len(sample_tar(key_of(i), m)) for i, m in enumerate(encoded)]
    err = max(codec.frame_error(s, m) for s, m in zip(batch, encoded))
    members = [dict(m) for m in encoded]
    codec.record(members[0])  # warm the decoder
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for m in members:
            codec.view(codec.record(m))
        best = min(best, (time.perf_counter() - t) * 1e6 / len(batch))
    return {"bytes": float(np.mean(sizes)), "encode_ms": enc_ms, "decode_us": best, "max_err": err,
            "label": label(codec), "tune_s": tune_s}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=40, help="samples per size (default 40)")
    p.add_argument("--sizes", default="96,224", help="frame sizes, comma-separated (default 96,224)")
    args = p.parse_args()
    for size in [int(x) for x in args.sizes.split(",")]:
        source = "MuJoCo renders"
        by_episode = {}
        for ep in (0, 1, 2):
            frames = mujoco_frames(args.samples + 2, size, ep)
            if frames is None:
                frames, source = synthetic_frames(args.samples + 2, size, ep), "SYNTHETIC frames (install '.[sim]')"
            by_episode[ep] = samples(frames, size, args.samples, ep)
        batch = by_episode[0]
        train = [(ep, s) for ep in (1, 2) for s in by_episode[ep]]
        raw = None
        print(f"\n{size}x{size}, {source}: {args.samples} samples of 3 frames + 1 s of numeric keys, one thread")
        print(f"{'encoding':<58}{'bytes/sample':>13}{'vs raw':>8}{'encode ms':>11}{'decode µs':>11}{'max err':>9}"
              f"{'tuning s':>10}")
        for enc in ENCODINGS:
            r = measure(enc, size, batch, train)
            raw = raw or r["bytes"]
            print(f"{r['label']:<58}{r['bytes']:>13,.0f}{raw / r['bytes']:>7.1f}x{r['encode_ms']:>11.2f}"
                  f"{r['decode_us']:>11.0f}{r['max_err']:>9d}{r['tune_s']:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
