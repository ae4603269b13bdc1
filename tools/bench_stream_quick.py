"""Quick side-by-side throughput: StreamLoader (num_workers 0 and 2) vs plain webdataset iteration.

Builds (once, under --work) a synthetic table (20 episodes x ~10 s, 96x96 video) and exports it with
1 s windows and frame offsets [-2, -1, 0]; then, alternating in one run, measures samples/s of
- `webdataset.WebDataset(urls, shardshuffle=False).decode()` iterated sample by sample (no wdspq), and
- `wdspq.StreamLoader(ShardStream(...), batch_size, num_workers)` for num_workers 0 and 2 (tensors,
  collated batches, cursor accounting),
each over one full pass of the same shards. Prints a table and writes JSON with --json.
The full benchmark harness is tools/bench.py; this script stays small on purpose.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any


def prepare(work: Path, stride: int, samples_per_shard: int) -> Path:
    """Build the table and export the shards under `work` unless already there."""
    import wdspq
    from wdspq.build import build_synthetic
    from wdspq.text import bundled_bert_uncased_path

    table = work / "table.parquet"
    shards = work / f"shards-v2raw-stride{stride}-n{samples_per_shard}"
    if not table.exists():
        build_synthetic(table, episodes=20, seconds=10.0, video_size=96, seed=0, progress=False)
    if not (shards / "manifest.json").exists():
        spec = wdspq.WindowSpec(acts_length_sec=1.0, obs_length_sec=1.0, video_frame_offsets=[-2, -1, 0],
                                stride=stride)
        wdspq.export_shards(table, shards, spec, tokenizer=bundled_bert_uncased_path() or "bert-base-uncased",
                            samples_per_shard=samples_per_shard, seed=0, progress=False,
                            encoding=wdspq.shardfmt.RAW)  # raw records: webdataset's .decode() reads them too
    return shards


def bench_webdataset(shards: Path) -> tuple[int, float]:
    """Plain webdataset: read and decode every sample of every shard, in shard order."""
    import webdataset as wds

    manifest = json.loads((shards / "manifest.json").read_text())
    urls = [str(shards / s["name"]) for s in manifest["shards"]]
    t0 = time.perf_counter()
    n = sum(1 for _ in wds.WebDataset(urls, shardshuffle=False).decode())
    return n, time.perf_counter() - t0


def bench_stream(shards: Path, num_workers: int, batch_size: int) -> tuple[int, float]:
    """StreamLoader over one epoch (worker start-up included)."""
    import wdspq

    loader = wdspq.StreamLoader(wdspq.ShardStream(shards, seed=0), batch_size=batch_size, num_workers=num_workers)
    t0 = time.perf_counter()
    n = sum(int((b["window_index"] >= 0).sum()) for b in loader)
    return n, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/wdspq-bench-stream", help="folder for the table and shards")
    ap.add_argument("--stride", type=int, default=10, help="window stride in action steps (default 10)")
    ap.add_argument("--samples-per-shard", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="alternating rounds; the median is reported")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    shards = prepare(work, args.stride, args.samples_per_shard)
    manifest = json.loads((shards / "manifest.json").read_text())
    size = sum(int(s["bytes"]) for s in manifest["shards"])
    print(f"shards: {shards} ({len(manifest['shards'])} shards, {manifest['num_windows']} windows, "
          f"{size / 2**20:.0f} MiB; prepared in {time.perf_counter() - t0:.1f} s)")
    runs: dict[str, Any] = {
        "webdataset .decode()": lambda: bench_webdataset(shards),
        "StreamLoader num_workers=0": lambda: bench_stream(shards, 0, args.batch_size),
        "StreamLoader num_workers=2": lambda: bench_stream(shards, 2, args.batch_size),
    }
    rates: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            n, dt = fn()
            assert n == manifest["num_windows"], (name, n)
            rates[name].append(n / dt)
    print(f"{'reader':32s} {'samples/s (median)':>20s}  rounds")
    for name, r in rates.items():
        print(f"{name:32s} {statistics.median(r):20.0f}  {' '.join(f'{x:.0f}' for x in r)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"windows": manifest["num_windows"], "shards": len(manifest["shards"]),
                                               "bytes": size, "batch_size": args.batch_size, "samples_per_s": rates},
                                              indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
