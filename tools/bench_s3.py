#!/usr/bin/env python
"""Benchmark streaming from a local S3 server against streaming from local files, side by side.

Builds (or reuses) a synthetic table (default 20 episodes x 5 s, 96x96 video at 20 fps, 64x64 images),
exports it with 1 s windows and frame offsets [-2, -1, 0] to a local folder and to a moto S3 server
that this script starts on 127.0.0.1 (tools/s3_server.py; $WDSPQ_TEST_S3_ENDPOINT uses an external
endpoint instead), then streams both exports with `StreamLoader` for each worker count, alternating
local and S3 runs, and reports the median samples/s and MB/s (shard bytes per second) of each.

    .venv/bin/python tools/bench_s3.py [--work /tmp/wdspq-bench-s3] [--workers 0 2] [--json out.json]

Note: moto copies the whole object for every ranged GET and serves from one Python process, so its
figures are a pessimistic stand-in for MinIO or AWS; the local files are in the page cache.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from wdspq.build import build_synthetic  # noqa: E402
from wdspq.export import export_shards  # noqa: E402
from wdspq.stream import ShardStream, StreamLoader  # noqa: E402
from wdspq.text import bundled_bert_uncased_path  # noqa: E402
from wdspq.windows import WindowSpec  # noqa: E402


def _s3_server_module() -> Any:
    spec = importlib.util.spec_from_file_location("wdspq_tools_s3_server", Path(__file__).with_name("s3_server.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/wdspq-bench-s3", help="folder for the table and the local shards")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seconds", type=float, default=5.0, help="mean episode length (lengths vary 0.6-1.4x)")
    p.add_argument("--video-size", type=int, default=96)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--stride", type=int, default=10, help="window stride in action steps (100 Hz actions)")
    p.add_argument("--samples-per-shard", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts")
    p.add_argument("--repeats", type=int, default=3, help="alternating local/S3 rounds; the median is reported")
    p.add_argument("--json", dest="json_path", help="write the figures to this JSON file")
    return p.parse_args(argv)


def prepare(args: argparse.Namespace) -> tuple[Path, Path, WindowSpec, str]:
    """The table and the local export (built or reused), the spec and the tokenizer path."""
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    table = work / f"table-{args.episodes}x{args.seconds:g}s-{args.video_size}px.parquet"
    if not table.exists():
        t = time.perf_counter()
        build_synthetic(table, episodes=args.episodes, seconds=args.seconds, image_size=args.image_size,
                        video_size=args.video_size, seed=0, progress=False)
        print(f"built {table} in {time.perf_counter() - t:.1f} s", flush=True)
    spec = WindowSpec(acts_length_sec=1.0, obs_length_sec=1.0, video_frame_offsets=[-2, -1, 0], stride=args.stride)
    tokenizer = bundled_bert_uncased_path()
    local = work / f"shards-{table.stem}-s{args.stride}-n{args.samples_per_shard}"
    if not (local / "manifest.json").exists():
        t = time.perf_counter()
        export_shards(table, local, spec, tokenizer=tokenizer, samples_per_shard=args.samples_per_shard, seed=0,
                      progress=False, overwrite=True)
        print(f"exported locally to {local} in {time.perf_counter() - t:.1f} s", flush=True)
    return table, local, spec, tokenizer


def stream_once(source: str, workers: int, batch_size: int) -> tuple[int, float]:
    """Samples of one full epoch and its wall time (loader start-up included)."""
    t = time.perf_counter()
    loader = StreamLoader(ShardStream(source, seed=0), batch_size=batch_size, num_workers=workers)
    n = 0
    for batch in loader:
        n += len(batch["window_index"])
    return n, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    table, local, spec, tokenizer = prepare(args)
    manifest = json.loads((local / "manifest.json").read_text())
    n_windows = manifest["num_windows"]
    total_mb = sum(s["bytes"] for s in manifest["shards"]) / 1e6
    s3 = _s3_server_module()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    results: list[dict[str, Any]] = []
    with s3.local_s3_server() as endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint)
        bucket = f"wdspq-bench-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=bucket)
        url = f"s3://{bucket}/shards"
        try:
            t = time.perf_counter()
            export_shards(table, url, spec, tokenizer=tokenizer, samples_per_shard=args.samples_per_shard, seed=0,
                          progress=False)
            export_s = time.perf_counter() - t
            print(f"exported to {url} at {endpoint} in {export_s:.1f} s "
                  f"({n_windows} windows, {len(manifest['shards'])} shards, {total_mb:.1f} MB)", flush=True)
            for workers in args.workers:
                stream_once(str(local), workers, args.batch_size)  # warm-up: page cache, imports
                times: dict[str, list[float]] = {"local": [], "s3": []}
                for _ in range(args.repeats):
                    for name, source in (("local", str(local)), ("s3", url)):
                        n, dt = stream_once(source, workers, args.batch_size)
                        assert n == n_windows, (name, n, n_windows)
                        times[name].append(dt)
                for name in ("local", "s3"):
                    dt = statistics.median(times[name])
                    results.append({"source": name, "workers": workers, "seconds": dt,
                                    "samples_per_s": n_windows / dt, "mb_per_s": total_mb / dt,
                                    "all_seconds": times[name]})
        finally:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
            client.delete_bucket(Bucket=bucket)

    print(f"\n{n_windows} windows, {total_mb:.1f} MB in {len(manifest['shards'])} shards, batch {args.batch_size}, "
          f"median of {args.repeats}; {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"{'workers':>7} | {'local samples/s':>15} {'MB/s':>7} | {'S3 samples/s':>12} {'MB/s':>7} | {'S3/local':>8}")
    for workers in args.workers:
        loc = next(r for r in results if r["source"] == "local" and r["workers"] == workers)
        rem = next(r for r in results if r["source"] == "s3" and r["workers"] == workers)
        print(f"{workers:>7} | {loc['samples_per_s']:>15.0f} {loc['mb_per_s']:>7.1f} | {rem['samples_per_s']:>12.0f} "
              f"{rem['mb_per_s']:>7.1f} | {rem['samples_per_s'] / loc['samples_per_s']:>8.2f}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({
            "windows": n_windows, "shards": len(manifest["shards"]), "megabytes": total_mb,
            "batch_size": args.batch_size, "repeats": args.repeats, "s3_export_seconds": export_s,
            "cpus": os.cpu_count(), "python": platform.python_version(), "results": results,
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
