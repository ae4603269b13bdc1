#!/usr/bin/env python
"""Benchmark the map-style reference: `ds[i]` samples/s in random order, single process.

Builds a synthetic table (default 20 episodes x 10 s, 96x96 video at 20 fps, 64x64 images) or reuses
`--table`, then measures 1 s windows with frame offsets [-2, -1, 0] in three regimes:

- cold: `cache_bytes=0`, so every sample decodes its episode's clip (the cost without the cache);
- first pass: a fresh default cache, random order (each episode decoded on first touch);
- warm: the same dataset afterwards, every episode cached.

Prints a small table and, with `--json PATH`, writes the figures as JSON.

    .venv/bin/python tools/bench_map.py [--table data/bench.parquet] [--samples 3000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from wdspq.build import build_synthetic  # noqa: E402
from wdspq.table.episodes import DEFAULT_CACHE_BYTES  # noqa: E402
from wdspq.table_dataset import ParquetWindowDataset  # noqa: E402
from wdspq.text import default_tokenizer  # noqa: E402
from wdspq.windows import WindowSpec  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", help="table to use; built there first if it does not exist (default: a temp file)")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seconds", type=float, default=10.0, help="mean episode length (lengths vary 0.6-1.4x)")
    p.add_argument("--video-size", type=int, default=96)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--fps", type=int, default=20)
    p.add_argument("--acts-sec", type=float, default=1.0)
    p.add_argument("--obs-sec", type=float, default=1.0)
    p.add_argument("--offsets", default="-2,-1,0", help="video frame offsets, comma separated")
    p.add_argument("--samples", type=int, default=3000, help="samples per warm / first-pass measurement")
    p.add_argument("--cold-samples", type=int, default=60, help="samples measured with the cache off")
    p.add_argument("--cache-mb", type=float, default=DEFAULT_CACHE_BYTES / 2**20)
    p.add_argument("--tokenizer", default=None, help="tokenizer name or folder (default: the bundled BERT-uncased)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_path", help="write the figures to this JSON file")
    return p.parse_args(argv)


def time_samples(ds: ParquetWindowDataset, order: np.ndarray) -> tuple[float, float]:
    """(samples/s, mean ms per sample) of `ds[i]` over `order`."""
    t = time.perf_counter()
    for i in order:
        ds[int(i)]
    dt = time.perf_counter() - t
    return len(order) / dt, 1000.0 * dt / len(order)


def cache_stats(ds: ParquetWindowDataset) -> dict:
    c = ds._proc()["cache"]
    total = c.hits + c.misses
    return {
        "cache_bytes": c.bytes,
        "cache_mib": round(c.bytes / 2**20, 2),
        "cache_limit_mib": round(c.max_bytes / 2**20, 2),
        "cached_episodes": sum(1 for k in c.items if k[0] == "episode"),
        "hits": c.hits,
        "misses": c.misses,
        "hit_rate": round(c.hits / total, 4) if total else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmpdir = None
    if args.table:
        table = Path(args.table)
    else:
        tmpdir = tempfile.TemporaryDirectory(prefix="wdspq-bench-")
        table = Path(tmpdir.name) / "bench.parquet"
    built_s = None
    if not table.exists():
        t = time.perf_counter()
        build_synthetic(table, episodes=args.episodes, seconds=args.seconds, image_size=args.image_size,
                        video_size=args.video_size, fps=args.fps, seed=args.seed, workers=1, progress=False)
        built_s = time.perf_counter() - t
    tokenizer = args.tokenizer or default_tokenizer()
    offsets = [int(x) for x in args.offsets.split(",")]
    spec = WindowSpec(acts_length_sec=args.acts_sec, obs_length_sec=args.obs_sec, video_frame_offsets=offsets)
    cache_bytes = int(args.cache_mb * 2**20)

    t = time.perf_counter()
    ds = ParquetWindowDataset(table, spec, tokenizer=tokenizer, cache_bytes=cache_bytes)
    open_s = time.perf_counter() - t
    rng = np.random.default_rng(args.seed)
    n = len(ds)

    cold_ds = ParquetWindowDataset(table, spec, tokenizer=tokenizer, cache_bytes=0)
    cold_order = rng.integers(0, n, size=min(args.cold_samples, n))
    cold_sps, cold_ms = time_samples(cold_ds, cold_order)

    first_order = rng.permutation(n)[: args.samples]
    first_sps, first_ms = time_samples(ds, first_order)
    first_stats = cache_stats(ds)
    c = ds._proc()["cache"]
    c.hits = c.misses = 0
    warm_order = rng.integers(0, n, size=args.samples)
    warm_sps, warm_ms = time_samples(ds, warm_order)
    warm_stats = cache_stats(ds)

    sample = ds[0]
    sample_bytes = sum(v.numel() * v.element_size() for v in sample.values())
    result = {
        "table": str(table) if args.table else "(temporary)",
        "episodes": ds.num_episodes,
        "windows": n,
        "spec": spec.to_dict(),
        "A": ds.rspec.A,
        "signals": {name: sig.O for name, sig in ds.rspec.signals.items()},
        "camera_hw": {c.name: list(c.hw) for c in ds.meta.cameras},
        "image_hw": {c.name: list(c.hw) for c in ds.meta.images},
        "sample_bytes": sample_bytes,
        "build_s": None if built_s is None else round(built_s, 2),
        "open_s": round(open_s, 3),
        "cold": {"samples": len(cold_order), "samples_per_s": round(cold_sps, 1), "ms_per_sample": round(cold_ms, 3)},
        "first_pass": {"samples": len(first_order), "samples_per_s": round(first_sps, 1),
                       "ms_per_sample": round(first_ms, 3), **first_stats},
        "warm": {"samples": len(warm_order), "samples_per_s": round(warm_sps, 1),
                 "ms_per_sample": round(warm_ms, 3), **warm_stats},
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }

    cams = ", ".join(f"{k} {len(offsets)}x3x{h}x{w}" for k, (h, w) in result["camera_hw"].items())
    print(f"table: {result['table']}  episodes={ds.num_episodes} windows={n} A={ds.rspec.A} signals={result['signals']} "
          f"frames: {cams} sample={sample_bytes / 1024:.1f} KiB")
    print(f"open: {open_s:.2f} s" + (f"   build: {built_s:.1f} s" if built_s is not None else ""))
    print(f"{'regime':<28}{'samples':>9}{'samples/s':>12}{'ms/sample':>11}{'hit rate':>10}{'cache MiB':>11}")
    rows = [
        ("cold (cache off)", result["cold"], None, None),
        ("first pass (fresh cache)", result["first_pass"], first_stats["hit_rate"], first_stats["cache_mib"]),
        ("warm (episodes cached)", result["warm"], warm_stats["hit_rate"], warm_stats["cache_mib"]),
    ]
    for name, r, hit, mib in rows:
        print(f"{name:<28}{r['samples']:>9}{r['samples_per_s']:>12.1f}{r['ms_per_sample']:>11.3f}"
              f"{'-' if hit is None else f'{hit:.3f}':>10}{'-' if mib is None else f'{mib:.1f}':>11}")
    print(f"cache: {warm_stats['cached_episodes']} episodes, {warm_stats['cache_mib']} MiB "
          f"of {warm_stats['cache_limit_mib']} MiB")
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json_path}")
    if tmpdir is not None:
        tmpdir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
