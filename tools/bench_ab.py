#!/usr/bin/env python
"""Stream throughput of two checkouts of wdspq side by side (A/B), alternating, on the same data, in one run.

For a change to the stream's hot path: samples per CPU second (and per wall second) of
  stream      ShardStream iterated directly (per-sample dicts of tensors);
  loader wN   StreamLoader(batch_size=32, num_workers=N), N = 0 and 2 (non-persistent workers; their CPU is
              counted once they are reaped),
over the raw and default-encoding exports that tools/bench.py builds (run it once, or pass --data to another
folder holding `shards/` and `shards-default/`), or over the exports given with `--export` (repeatable; e.g. the
one-shard sim export of tools/bench_epoch.py). `--persistent`: persistent workers over the epochs, start-up
included (as tools/bench_epoch.py and tools/bench_shared.py measure); `--workers 0 2` picks the loader cases. Each measurement is a fresh interpreter with PYTHONPATH set to
one checkout; A and B alternate per measurement (their order flips every round) and medians are reported.
CPU time is the figure to compare on a shared machine: other users' load inflates wall time far more.

    git archive <old-commit> wdspq | tar -x -C /tmp/old       # a checkout of the old code
    .venv/bin/python tools/bench_ab.py --a /tmp/old --b . --data bench_out/data/scale1-... [--rounds 9 --epochs 4]
    .venv/bin/python tools/bench_ab.py --a /tmp/old --b . --export /tmp/wdspq-bench-epoch/sim-one-shard \
        --persistent --workers 0 2 --epochs 5 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

MEASURE = """
import gc, json, resource, sys, time
from wdspq.stream import ShardStream, StreamLoader
shards, epochs, workers, persistent = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
stream = ShardStream(shards, shuffle=True, seed=0)
loader = StreamLoader(stream, batch_size=32, num_workers=workers,
                      persistent_workers=persistent and workers > 0) if workers >= 0 else None
def cpu():  # this process and its reaped children (workers)
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime
n, c, t = 0, cpu(), time.perf_counter()
for e in range(epochs):
    if loader is None:
        stream.set_epoch(e)
        n += sum(1 for _ in stream)
    else:
        loader.set_epoch(e)
        n += sum(len(b["window_index"]) for b in loader)
wall = time.perf_counter() - t
del loader
gc.collect()
time.sleep(0.05)  # let the last workers be reaped
print(json.dumps({"cpu": n / (cpu() - c), "wall": n / wall}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", required=True, help="checkout A (a folder holding the wdspq package), e.g. the old code")
    p.add_argument("--b", required=True, help="checkout B, e.g. this one")
    p.add_argument("--data", help="folder with shards/ (raw) and shards-default/ (tools/bench.py)")
    p.add_argument("--export", action="append", default=[], help="an export folder to measure (repeatable; instead of --data)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader worker counts (default 0 2)")
    p.add_argument("--no-stream", action="store_true", help="skip the direct ShardStream case")
    p.add_argument("--persistent", action="store_true", help="persistent workers over the epochs")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--epochs", type=int, default=4, help="epochs per measurement (default 4)")
    a = p.parse_args(argv)
    if bool(a.data) == bool(a.export):
        p.error("give --data or --export")
    kinds = ([] if a.no_stream else [("stream", -1)]) + [(f"loader w{w}", w) for w in a.workers]
    folders = ([("raw", Path(a.data) / "shards"), ("default", Path(a.data) / "shards-default")] if a.data else
               [(Path(x).name, Path(x)) for x in a.export])
    cases = {f"{kind} {enc}": (str(folder), nw) for kind, nw in kinds for enc, folder in folders}
    sides = {"A": str(Path(a.a).resolve()), "B": str(Path(a.b).resolve())}
    res: dict[tuple[str, str, str], list[float]] = {(c, s, m): [] for c in cases for s in sides for m in ("cpu", "wall")}
    for r in range(a.rounds):
        for c, (shards, nw) in cases.items():
            for side in (("A", "B") if r % 2 == 0 else ("B", "A")):
                env = {**os.environ, "PYTHONPATH": sides[side]}
                out = subprocess.run([sys.executable, "-c", MEASURE, shards, str(a.epochs), str(nw),
                                      str(int(a.persistent))], env=env,
                                     capture_output=True, text=True, cwd="/")
                if out.returncode:
                    print(f"{c} ({side}) failed:\n{out.stderr[-3000:]}", file=sys.stderr)
                    return 1
                d = json.loads(out.stdout.strip().splitlines()[-1])
                for m in ("cpu", "wall"):
                    res[(c, side, m)].append(d[m])
        print(f"round {r + 1}/{a.rounds} done", flush=True)
    print(f"samples/s, medians of {a.rounds} rounds x {a.epochs} epochs; A = {sides['A']}, B = {sides['B']}; "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    width = max(18, *(len(c) for c in cases))
    print(f"{'case':{width}s} {'A cpu':>9s} {'B cpu':>9s} {'B/A':>6s} {'A wall':>9s} {'B wall':>9s} {'B/A':>6s}")
    for c in cases:
        med = {(s, m): statistics.median(res[(c, s, m)]) for s in sides for m in ("cpu", "wall")}
        print(f"{c:{width}s} {med['A', 'cpu']:9.0f} {med['B', 'cpu']:9.0f} {med['B', 'cpu'] / med['A', 'cpu']:6.3f} "
              f"{med['A', 'wall']:9.0f} {med['B', 'wall']:9.0f} {med['B', 'wall'] / med['A', 'wall']:6.3f}")
    for enc, _ in folders:  # workers vs none, per side: the medians' ratio (wall)
        base = f"loader w0 {enc}"
        for w in (x for x in a.workers if x > 0 and 0 in a.workers):
            c = f"loader w{w} {enc}"
            ratio = {s: statistics.median(res[(c, s, "wall")]) / statistics.median(res[(base, s, "wall")]) for s in sides}
            print(f"{c}: w{w}/w0 wall, A {ratio['A']:.3f}, B {ratio['B']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
