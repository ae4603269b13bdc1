"""Throughput of a 3-source mixture vs one export of the same total size (docs/mixtures.md "Throughput").

Builds (once, under --work) three synthetic tables of E episodes (seeds 0, 1, 2) and one of 3 x E episodes,
exports each with the same spec, then, alternating in one run, measures samples/s of one epoch of
- `StreamLoader(ShardStream(single_export))` and
- `StreamLoader(ShardStream([Source(a, w), Source(b, w), Source(c, w)], samples_per_epoch=its windows))`
(weights proportional to the sources' windows, so both read the same number of samples of the same size),
for each --workers value. Prints the medians and their ratio; writes JSON with --json.

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


def epoch_rate(make: Any, batch_size: int, workers: int) -> tuple[float, int]:
    """(samples/s, samples) of one epoch of a fresh loader."""
    import wdspq

    loader = wdspq.StreamLoader(make(), batch_size=batch_size, num_workers=workers)
    t0, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch["window_index"])
    return n / (time.perf_counter() - t0), n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/wdspq-bench-mixture"))
    p.add_argument("--episodes", type=int, default=10, help="episodes per source table (the single one has 3x)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per episode")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--json", type=Path)
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
        rates: dict[str, list[float]] = {"single": [], "mixture": []}
        for _ in range(args.rounds):
            for name, make in (("single", one), ("mixture", mixture)):
                rates[name].append(epoch_rate(make, args.batch_size, w)[0])
        med = {k: statistics.median(v) for k, v in rates.items()}
        ratio = med["mixture"] / med["single"]
        results["by_workers"][w] = {"rates": rates, "median": med, "ratio": ratio}
        print(f"num_workers={w}: single {med['single']:,.0f} samples/s, mixture {med['mixture']:,.0f} samples/s, "
              f"mixture/single {ratio:.3f} (rounds: {[round(x) for x in rates['single']]} / "
              f"{[round(x) for x in rates['mixture']]})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
