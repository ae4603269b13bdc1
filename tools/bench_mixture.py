"""Throughput of a 3-source mixture vs one export of the same total size (docs/mixtures.md "Throughput").

Builds (once, under --work) three synthetic tables of E episodes (seeds 0, 1, 2) and one of 3 x E episodes,
exports each with the same spec, then, alternating in one run, measures samples/s of one epoch of
- `StreamLoader(ShardStream(single_export))` and
- `StreamLoader(ShardStream([Source(a, w), Source(b, w), Source(c, w)], samples_per_epoch=its windows))`
(weights proportional to the sources' windows, so both read the same number of samples of the same size),
for each --workers value. Prints the medians and their ratio; writes JSON with --json. With --persistent
each loader is built once with persistent workers (start-up outside the rounds) and only wall-clock
samples/s is reported (the workers' CPU clocks are read when they exit).

Besides wall-clock samples/s (noisy on a shared machine) it reports CPU figures from the processes' own
clocks: samples per CPU second of all processes together (main + workers: the total work), and samples
per CPU second of the busiest process (the bound on an idle machine with a core per process, which is
what uneven work between workers lowers).

    PYTHONPATH=$PWD python tools/bench_mixture.py --work /tmp/bench-mix --rounds 3 --workers 0 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any


def prepare(work: Path, episodes: int, seconds: float) -> tuple[list[str], str]:
    """The three source exports and the single export (built unless already there)."""
    import wdspq
    from wdspq.build import build_synthetic
    from wdspq.text import bundled_bert_uncased_path

    spec = wdspq.WindowSpec(acts_length_sec=1.0, obs_length_sec=1.0, video_frame_offsets=[-1, 0], stride=2)
    out = []
    for name, eps, seed in [("a", episodes, 0), ("b", episodes, 1), ("c", episodes, 2), ("single", 3 * episodes, 9)]:
        table, shards = work / f"{name}.parquet", work / f"shards-{name}"
        if not table.exists():
            build_synthetic(table, episodes=eps, seconds=seconds, video_size=64, seed=seed, progress=False)
        if not (shards / "manifest.json").exists():
            wdspq.export_shards(table, shards, spec, tokenizer=bundled_bert_uncased_path(), samples_per_shard=500,
                                seed=0, progress=False)
        out.append(str(shards))
    return out[:3], out[3]


TARGET = 0.9  # the mixture's throughput within 10 % of one export of the same total size


def _record_cpu(slots: Any, worker: int) -> None:
    """In a DataLoader worker: write this process's CPU seconds into `slots[worker]` when it exits."""
    from multiprocessing import util

    def done() -> None:
        slots[worker] = time.process_time()

    util.Finalize(None, done, exitpriority=100)


def epoch_rate(make: Any, batch_size: int, workers: int) -> dict[str, float]:
    """Samples/s of one epoch of a fresh loader: wall, per CPU second of all processes, and per CPU second
    of the busiest process (main or a worker)."""
    import functools
    import multiprocessing

    import wdspq

    slots = multiprocessing.Array("d", max(1, workers), lock=False)
    kw = {"worker_init_fn": functools.partial(_record_cpu, slots)} if workers else {}
    loader = wdspq.StreamLoader(make(), batch_size=batch_size, num_workers=workers, **kw)
    t0, c0, n = time.perf_counter(), time.process_time(), 0
    for batch in loader:
        n += len(batch["window_index"])
    wall, main_cpu = time.perf_counter() - t0, time.process_time() - c0
    del loader  # workers have exited (not persistent): their CPU seconds are in `slots`
    worker_cpu = list(slots)[:workers]
    return {"wall": n / wall, "cpu": n / (main_cpu + sum(worker_cpu)), "busiest": n / max([main_cpu, *worker_cpu]),
            "samples": n, "cpu_s": [round(main_cpu, 3), *(round(c, 3) for c in worker_cpu)]}


def persistent_rates(make: Any, batch_size: int, workers: int, rounds: int) -> list[dict[str, float]]:
    """Wall samples/s of `rounds` epochs of one loader with persistent workers (one warm-up epoch first)."""
    import wdspq

    loader = wdspq.StreamLoader(make(), batch_size=batch_size, num_workers=workers, persistent_workers=True)
    out = []
    for epoch in range(rounds + 1):
        loader.set_epoch(epoch)
        t0, n = time.perf_counter(), 0
        for batch in loader:
            n += len(batch["window_index"])
        if epoch:
            out.append({"wall": n / (time.perf_counter() - t0), "samples": n})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/wdspq-bench-mixture"))
    p.add_argument("--episodes", type=int, default=10, help="episodes per source table (the single one has 3x)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per episode")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--json", type=Path)
    p.add_argument("--persistent", action="store_true", help="persistent workers: one loader, --rounds epochs")
    args = p.parse_args(argv)
    import wdspq

    args.work.mkdir(parents=True, exist_ok=True)
    parts, single = prepare(args.work, args.episodes, args.seconds)
    sizes = [wdspq.shardfmt.load_manifest(s).num_windows for s in parts]
    total = sum(sizes)
    n_single = wdspq.shardfmt.load_manifest(single).num_windows
    print(f"sources {sizes} windows (total {total}); single export {n_single} windows")

    def mixture() -> Any:
        return wdspq.ShardStream([wdspq.Source(s, weight=n) for s, n in zip(parts, sizes)], samples_per_epoch=total)

    def one() -> Any:
        return wdspq.ShardStream(single)

    results: dict[str, Any] = {"sizes": sizes, "single_windows": n_single, "batch_size": args.batch_size, "by_workers": {}}
    for w in args.workers:
        if args.persistent and w > 0:
            pr = {name: persistent_rates(make, args.batch_size, w, args.rounds) for name, make in (("single", one), ("mixture", mixture))}
            med = {name: statistics.median(r["wall"] for r in rs) for name, rs in pr.items()}
            results["by_workers"][w] = {"persistent": pr, "median_wall": med}
            print(f"num_workers={w} persistent wall-clock: single {med['single']:,.0f} samples/s, mixture "
                  f"{med['mixture']:,.0f} samples/s, mixture/single {med['mixture'] / med['single']:.3f} (epochs: "
                  f"{[round(r['wall']) for r in pr['single']]} / {[round(r['wall']) for r in pr['mixture']]})")
            continue
        rates: dict[str, list[dict[str, float]]] = {"single": [], "mixture": []}
        for _ in range(args.rounds):
            for name, make in (("single", one), ("mixture", mixture)):
                rates[name].append(epoch_rate(make, args.batch_size, w))
        med = {name: {m: statistics.median(r[m] for r in rs) for m in ("wall", "cpu", "busiest")}
               for name, rs in rates.items()}
        ratio = {m: med["mixture"][m] / med["single"][m] for m in ("wall", "cpu", "busiest")}
        results["by_workers"][w] = {"rates": rates, "median": med, "ratio": ratio}
        for m, what in (("wall", "wall-clock"), ("cpu", "per CPU second (all processes)"),
                        ("busiest", "per CPU second of the busiest process")):
            print(f"num_workers={w} {what}: single {med['single'][m]:,.0f} samples/s, mixture "
                  f"{med['mixture'][m]:,.0f} samples/s, mixture/single {ratio[m]:.3f} (rounds: "
                  f"{[round(r[m]) for r in rates['single']]} / {[round(r[m]) for r in rates['mixture']]})")
        print(f"num_workers={w} CPU seconds per round [main, workers...]: single {[r['cpu_s'] for r in rates['single']]}, "
              f"mixture {[r['cpu_s'] for r in rates['mixture']]}")
        verdict = "PASS" if ratio["wall"] >= TARGET else "FAIL"
        print(f"target: num_workers={w} mixture/single wall-clock >= {TARGET} (within 10 %): {ratio['wall']:.3f} {verdict}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
