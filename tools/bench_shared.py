"""Shared-frames layout vs per-sample samples, side by side on the same tables (docs/shards.md "Shared frames").

For the sim table (`wdspq build sim`: MuJoCo, 2 cameras, 96x96; stride 1, offsets [-1, 0]) and the
synthetic peer-style table (20 episodes x 10 s, 96x96, offsets [-2, -1, 0], stride 4), it exports:
the per-sample layout, shared frames with each `--segments` length (the default layout, segment 32, is
marked `*` in the table), and raw records in
window order (not shuffled), whose shard files compressed whole with zstd-3 are the reference (what a
whole-shard compressor such as Mosaic MDS gets). Then per export: bytes/sample, the dry run's
estimate, export time, stream throughput (one epoch of `ShardStream`, alternating rounds, medians),
episodes per batch of 32 (`StreamLoader`, 0 workers, distinct `episode_index` per batch), and
`StreamLoader` throughput with 0 and `--workers` workers (batch 32, `--loader-epochs` epochs with persistent
workers, each run in a fresh interpreter as a training job is; alternating rounds, medians) and their
ratio: over all epochs with construction and start-up, and "steady" over the epochs after the first.

    MUJOCO_GL=egl python tools/bench_shared.py [--work bench_out/shared] [--rounds 3] [--segments 16,32,64]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any


def build_tables(work: Path, skip_sim: bool) -> dict[str, tuple[Path, dict[str, Any]]]:
    from wdspq.build import build_synthetic

    work.mkdir(parents=True, exist_ok=True)
    tables: dict[str, tuple[Path, dict[str, Any]]] = {}
    peer = work / "peer.parquet"
    if not peer.exists():
        build_synthetic(peer, episodes=20, seconds=10.0, video_size=96, seed=0, progress=False)
    tables["peer"] = (peer, {"acts_length_sec": 1.0, "obs_length_sec": 1.0, "video_frame_offsets": [-2, -1, 0],
                             "stride": 4})
    if not skip_sim:
        os.environ.setdefault("MUJOCO_GL", "egl")
        from wdspq.build import build_sim

        sim = work / "sim.parquet"
        if not sim.exists():
            build_sim(sim, episodes=16, seconds=5.0, video_size=96, progress=False)
        tables["sim"] = (sim, {"acts_length_sec": 1.0, "obs_length_sec": 1.0, "video_frame_offsets": [-1, 0],
                               "stride": 1})
    return tables


def whole_shard_zstd(folder: Path) -> int:
    """Bytes of every shard file of `folder` compressed whole with zstd-3."""
    import zstandard

    m = json.loads((folder / "manifest.json").read_text())
    z = zstandard.ZstdCompressor(level=3)
    return sum(len(z.compress((folder / s["name"]).read_bytes())) for s in m["shards"])


def stream_epoch(folder: Path) -> tuple[float, float]:
    """Samples/s of one epoch of ShardStream (wall, CPU of this process)."""
    import wdspq

    stream = wdspq.ShardStream(str(folder), shuffle=True, seed=0)
    t, c = time.perf_counter(), time.process_time()
    n = sum(1 for _ in stream)
    return n / (time.perf_counter() - t), n / max(time.process_time() - c, 1e-9)


def episodes_per_batch(folder: Path, batch: int = 32) -> float:
    """Mean distinct episodes in a batch of `batch` (StreamLoader, no workers, seed 0), full batches only."""
    import wdspq

    loader = wdspq.StreamLoader(wdspq.ShardStream(str(folder), shuffle=True, seed=0), batch, 0)
    counts = [len(set(b["episode_index"].tolist())) for b in loader if len(b["episode_index"]) == batch]
    return statistics.mean(counts) if counts else float("nan")


LOADER_RUN = """
import json, sys, time
from wdspq.stream import ShardStream, StreamLoader
folder, workers, epochs, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
t = time.perf_counter()
loader = StreamLoader(ShardStream(folder, shuffle=True, seed=0), batch, workers, persistent_workers=workers > 0)
n, first = 0, None
for e in range(epochs):
    loader.set_epoch(e)
    n += sum(int((b["window_index"] >= 0).sum()) for b in loader)
    if first is None:
        first, t1 = n, time.perf_counter()
t2 = time.perf_counter()
print(json.dumps({"total": n / (t2 - t), "steady": (n - first) / (t2 - t1) if epochs > 1 else float("nan")}))
"""


def loader_rate(folder: Path, workers: int, epochs: int, batch: int = 32) -> tuple[float, float]:
    """Samples/s of `epochs` epochs of StreamLoader with persistent workers, in a fresh interpreter (as a
    training job starts: not the process that just exported, whose heap and size change both the 0-worker
    speed and the cost of forking): (all epochs with construction and worker start-up, the epochs after
    the first)."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", LOADER_RUN, str(folder), str(workers), str(epochs), str(batch)],
                         env=env, capture_output=True, text=True, check=True)
    d = json.loads(out.stdout.strip().splitlines()[-1])
    return d["total"], d["steady"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="bench_out/shared")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--segments", default="16,32,64")
    p.add_argument("--samples-per-shard", type=int, default=200)
    p.add_argument("--no-sim", action="store_true")
    p.add_argument("--workers", type=int, nargs="+", default=[2],
                   help="StreamLoader workers compared with 0 (0: skip; `--workers 0 2` is `--workers 2`)")
    p.add_argument("--loader-epochs", type=int, default=5)
    p.add_argument("--json", dest="json_path", default=None)
    args = p.parse_args()
    if len([w for w in args.workers if w]) > 1:
        p.error("--workers: one worker count to compare with 0")
    args.workers = max(args.workers)
    import wdspq
    from wdspq.shardfmt import DEFAULT_ENCODING, RAW, Encoding

    default = f"shared-{DEFAULT_ENCODING.segment}" if DEFAULT_ENCODING.layout == "shared-frames" else "per-sample"
    from wdspq.text import default_tokenizer

    work = Path(args.work)
    tok = default_tokenizer()
    report: dict[str, Any] = {}
    for tname, (table, spec) in build_tables(work, args.no_sim).items():
        encs: dict[str, Encoding] = {"per-sample": Encoding(layout="per-sample")}
        for s in (int(x) for x in args.segments.split(",") if x):
            encs[f"shared-{s}"] = Encoding(layout="shared-frames", segment=s)
        res: dict[str, Any] = {}
        raw_dir = work / f"{tname}-raw-ordered"
        m = wdspq.export_shards(table, raw_dir, spec, tokenizer=tok, samples_per_shard=args.samples_per_shard,
                                shuffle=False, encoding=RAW, progress=False, overwrite=True)
        n = int(m["num_windows"])
        res["windows"] = n
        res["raw_bytes_per_sample"] = sum(s["bytes"] for s in m["shards"]) / n
        res["time_ordered_whole_shard_zstd3"] = whole_shard_zstd(raw_dir) / n
        for name, enc in encs.items():
            out = work / f"{tname}-{name}"
            shutil.rmtree(out, ignore_errors=True)  # timed from scratch (an intact export would be reused)
            t = time.perf_counter()
            m = wdspq.export_shards(table, out, spec, tokenizer=tok, samples_per_shard=args.samples_per_shard,
                                    seed=0, encoding=enc, progress=False, overwrite=True)
            dt = time.perf_counter() - t
            est = wdspq.export_shards(table, work / f"{tname}-{name}-dry", spec, tokenizer=tok,
                                      samples_per_shard=args.samples_per_shard, seed=0, encoding=enc,
                                      progress=False, dry_run=True)
            total = sum(s["bytes"] for s in m["shards"]) + sum(s["index"]["bytes"] for s in m["shards"])
            total += m["encoding"].get("dictionary_file", {}).get("bytes", 0)
            res[name] = {"bytes_per_sample": sum(s["bytes"] for s in m["shards"]) / n, "export_s": dt,
                         "dry_run_total_vs_actual": est["total_bytes"] / total, "shards": len(m["shards"]),
                         "episodes_per_batch32": episodes_per_batch(out)}
        rates: dict[str, list[tuple[float, float]]] = {name: [] for name in encs}
        for _ in range(args.rounds):  # alternating, so load swings hit every layout alike
            for name in encs:
                rates[name].append(stream_epoch(work / f"{tname}-{name}"))
        for name in encs:
            res[name]["stream_samples_per_s"] = statistics.median(r[0] for r in rates[name])
            res[name]["stream_samples_per_cpu_s"] = statistics.median(r[1] for r in rates[name])
        if args.workers:
            loads: dict[tuple[str, int], list[tuple[float, float]]] = {
                (name, w): [] for name in encs for w in (0, args.workers)}
            for _ in range(args.rounds):
                for name, w in loads:
                    loads[(name, w)].append(loader_rate(work / f"{tname}-{name}", w, args.loader_epochs))
            for name in encs:
                w0, s0 = (statistics.median(x[i] for x in loads[(name, 0)]) for i in (0, 1))
                wn, sn = (statistics.median(x[i] for x in loads[(name, args.workers)]) for i in (0, 1))
                res[name].update({"loader_w0_samples_per_s": w0, f"loader_w{args.workers}_samples_per_s": wn,
                                  f"loader_w{args.workers}_vs_w0": wn / w0,
                                  f"loader_w{args.workers}_vs_w0_steady": sn / s0})
        report[tname] = res
        ref = res["time_ordered_whole_shard_zstd3"]
        print(f"\n{tname}: {n} windows; raw {res['raw_bytes_per_sample']:,.0f} B/sample; time-ordered whole-shard "
              f"zstd-3 {ref:,.0f} B/sample")
        wk = f"w{args.workers}"
        print(f"{'layout':<12} {'B/sample':>9} {'/ref':>6} {'dry-run':>8} {'samples/s':>10} {'/CPU s':>8} "
              f"{'eps/batch32':>11} {'export s':>8}" + (f" {'loader w0':>10} {'loader ' + wk:>10} {wk + '/w0':>6} "
                                                      f"{'steady':>6}" if args.workers else ""))
        for name in encs:
            r = res[name]
            print(f"{name + (' *' if name == default else ''):<12} {r['bytes_per_sample']:>9,.0f} {r['bytes_per_sample'] / ref:>6.2f} "
                  f"{r['dry_run_total_vs_actual']:>8.2f} {r['stream_samples_per_s']:>10,.0f} "
                  f"{r['stream_samples_per_cpu_s']:>8,.0f} {r['episodes_per_batch32']:>11.1f} {r['export_s']:>8.1f}"
                  + (f" {r['loader_w0_samples_per_s']:>10,.0f} {r[f'loader_{wk}_samples_per_s']:>10,.0f} "
                     f"{r[f'loader_{wk}_vs_w0']:>6.2f} {r[f'loader_{wk}_vs_w0_steady']:>6.2f}" if args.workers else ""))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
