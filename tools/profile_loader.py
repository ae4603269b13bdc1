#!/usr/bin/env python
"""Where a StreamLoader's time goes, per process: `num_workers=0` against N persistent workers on one export.

For each worker count (a fresh interpreter each, so one run's start-up and heap do not touch the next):
  start-up     loader construction, then iter() to the first batch, and epoch 0 (worker start-up included);
  steady       `--epochs` more epochs: samples/s, and CPU microseconds per sample of the main process and of
               each worker (/proc), so the work the main process adds and the balance of the workers show;
  per batch    in each worker: busy time (producing a batch) and idle time (waiting for the loader to ask
               for the next: the in-order hand-over) and minor page faults; in the main process the wait for
               each batch (`next()` on the loader).
The 2-core bound of `wN / w0` is 2 x (w0 CPU per sample) / (wN CPU per sample of all processes together).

    python tools/profile_loader.py EXPORT [--workers 0 2] [--epochs 5] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, resource, sys, time
from wdspq.stream import ShardStream, StreamLoader
from wdspq.stream import dataset as dsmod
src, workers, epochs, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
log = f"/tmp/wdspq-profile-{os.getpid()}"
orig = dsmod.ShardStream._collate_records

def timed(self, items, bs):  # per batch in the process that collates: busy/idle wall, page faults
    gen, recs = orig(self, items, bs), []
    try:
        while True:
            t0, f0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            try:
                b = next(gen)
            except StopIteration:
                break
            recs.append((t0, time.perf_counter(), resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - f0))
            yield b
    finally:
        with open(f"{log}.{os.getpid()}", "a") as f:
            f.write(json.dumps(recs) + "\n")

dsmod.ShardStream._collate_records = timed
tick = os.sysconf("SC_CLK_TCK")

def pcpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick

t0 = time.perf_counter()
loader = StreamLoader(ShardStream(src, seed=0), batch_size=batch, num_workers=workers, persistent_workers=workers > 0)
t1 = time.perf_counter()
it = iter(loader)
next(it)
t2 = time.perf_counter()
for _ in it:
    pass
t3 = time.perf_counter()
pids = [w.pid for w in loader._iterator._workers] if workers else []
c_main, c_w = time.process_time(), [pcpu(p) for p in pids]
waits, n, t = [], 0, time.perf_counter()
for e in range(1, epochs + 1):
    loader.set_epoch(e)
    it = iter(loader)
    while True:
        tw = time.perf_counter()
        try:
            b = next(it)
        except StopIteration:
            break
        waits.append(time.perf_counter() - tw)
        n += len(b["window_index"])
wall = time.perf_counter() - t
cm, cw = time.process_time() - c_main, [pcpu(p) - c for p, c in zip(pids, c_w)]
del it, b, loader
time.sleep(0.3)
per = {}
for name in os.listdir("/tmp"):
    if name.startswith(os.path.basename(log) + "."):
        lines = [json.loads(x) for x in open("/tmp/" + name)]
        os.remove("/tmp/" + name)
        steady = [r for L in lines[1:] for r in L]  # epoch 0 is start-up
        gaps = [L[i + 1][0] - L[i][1] for L in lines[1:] for i in range(len(L) - 1)]
        per[name.rsplit(".", 1)[1]] = {"batches": len(steady), "busy_ms": 1e3 * sum(r[1] - r[0] for r in steady),
                                       "idle_ms": 1e3 * sum(gaps), "faults_per_batch": sum(r[2] for r in steady) / max(1, len(steady))}
waits.sort()
print(json.dumps({"construct_ms": 1e3 * (t1 - t0), "first_batch_ms": 1e3 * (t2 - t1), "epoch0_ms": 1e3 * (t3 - t1),
                  "steady_samples_s": n / wall, "main_us": 1e6 * cm / n, "workers_us": [1e6 * x / n for x in cw],
                  "main_wait_median_ms": 1e3 * waits[len(waits) // 2], "main_wait_sum_ms": 1e3 * sum(waits),
                  "collating": per, "load": os.getloadavg()[0]}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export", help="an export folder (e.g. tools/bench_epoch.py's sim-one-shard)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--epochs", type=int, default=5, help="steady epochs after epoch 0 (default 5)")
    p.add_argument("--batch-size", type=int, default=32)
    a = p.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = {}
    for w in a.workers:
        out = subprocess.run([sys.executable, "-c", CHILD, a.export, str(w), str(a.epochs), str(a.batch_size)],
                             env=env, capture_output=True, text=True, cwd="/")
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        r = res[w] = json.loads(out.stdout.strip().splitlines()[-1])
        total = r["main_us"] + sum(r["workers_us"])
        print(f"w{w}: construct {r['construct_ms']:.0f} ms, first batch {r['first_batch_ms']:.0f} ms, epoch 0 "
              f"{r['epoch0_ms']:.0f} ms; steady {r['steady_samples_s']:,.0f} samples/s; CPU us/sample: main "
              f"{r['main_us']:.1f}, workers {[round(x, 1) for x in r['workers_us']]}, all {total:.1f}; main waits per "
              f"batch median {r['main_wait_median_ms']:.2f} ms; load {r['load']:.2f}")
        for pid, c in sorted(r["collating"].items()):
            print(f"   collating process {pid}: {c['batches']} batches, busy {c['busy_ms']:.0f} ms, idle between "
                  f"batches {c['idle_ms']:.0f} ms, {c['faults_per_batch']:.0f} page faults/batch")
    if 0 in res:
        base = res[0]["main_us"]
        for w, r in res.items():
            if w:
                total = r["main_us"] + sum(r["workers_us"])
                print(f"w{w}/w0 steady {r['steady_samples_s'] / res[0]['steady_samples_s']:.2f}; 2-core bound "
                      f"{min(w, 2) * base / total:.2f} (w0 {base:.1f} us/sample of CPU, w{w} {total:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
