"""Batch-mate pairs repeated from epoch 0 to epoch 1: a pure function of the plan (no shard is read).

    python tools/batchmates.py                 # the two reference plans, sequential vs block order
    python tools/batchmates.py --shards 24 --samples 200 --workers 2 --batch 16 --interleave 4

Of the pairs of windows that share a batch in epoch 1, the share that already shared one in epoch 0
(every rank's batches; pads excluded). A fresh global shuffle repeats (B-1)/(N-1). The block order's
rate may depend on how many samples fit a chunk and a block (wdspq.epoch_order.BLOCK_BYTES, CHUNKS), so it
is printed for a few sample sizes: the default export of the sim table (17.8 kB), the default encoding on
the synthetic peer data (7.0 kB), raw records (102.9 kB) and large samples (1 MB: one sample per chunk).
`--segment N` plans shared-frames shards (chunks of whole segments of N windows, `epoch_order.block_size`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wdspq.cursor import Topology, new_epoch_state, resume  # noqa: E402
from wdspq.epoch_order import block_size, in_shard_order  # noqa: E402

SAMPLE_BYTES = {"sim default 17.8 kB": 17_800, "default 7.0 kB": 7_004, "raw 102.9 kB": 102_944, "large 1 MB": 10**6}


def epoch_batch_ids(sizes: list[int], sample_bytes: int, topo: Topology, seed: int, epoch: int,
                    shard_order: str, segment: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(sample ids of every real entry of the epoch, the global batch number of each), from the plan. Sample
    id: the shard's offset in the export plus the sample's position in the shard. `segment`: shared frames."""
    offsets = np.r_[0, np.cumsum(sizes)].astype(np.int64)
    blocks = [block_size(n, n * sample_bytes, segment) for n in sizes]
    phys = np.concatenate([
        offsets[s] + in_shard_order(seed, epoch, s, n, blocks[s], shard_order)
        for s, n in enumerate(sizes)
    ]) if sizes else np.zeros(0, np.int64)
    state = new_epoch_state("m", "s", seed, True, epoch, len(sizes), topo, shard_order)
    ids, bids, nb = [], [], 0
    for rank in range(topo.world_size):
        plan = resume(state, sizes, topo, rank, blocks).plan
        per_worker, nth = [], [0] * topo.workers
        for w in range(topo.workers):
            s, q, pad = plan.slot_arrays(topo.slot(rank, w))
            per_worker.append(np.where(pad, -1, phys[offsets[s] + q]))
        for w, n in plan.batch_order(rank):
            b = per_worker[w][nth[w] : nth[w] + n]
            nth[w] += n
            b = b[b >= 0]
            ids.append(b)
            bids.append(np.full(len(b), nb, dtype=np.int64))
            nb += 1
    return np.concatenate(ids), np.concatenate(bids)


def repeat_rate(sizes: list[int], sample_bytes: int, topo: Topology, shard_order: str, seed: int = 0,
                segment: int = 0) -> float:
    """Share of epoch 1's batch-mate pairs that were batch-mates in epoch 0."""
    ids0, b0 = epoch_batch_ids(sizes, sample_bytes, topo, seed, 0, shard_order, segment)
    ids1, b1 = epoch_batch_ids(sizes, sample_bytes, topo, seed, 1, shard_order, segment)
    batch0 = np.full(int(sum(sizes)), -1, dtype=np.int64)
    batch0[ids0] = b0
    _, per_batch = np.unique(b1, return_counts=True)
    total = int((per_batch * (per_batch - 1) // 2).sum())
    _, c = np.unique(b1 * (int(b0.max(initial=0)) + 1) + batch0[ids1], return_counts=True)
    return float((c * (c - 1) // 2).sum()) / total if total else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int)
    ap.add_argument("--samples", type=int, help="samples per shard")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--world-size", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--interleave", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--segment", type=int, default=0, help="shared-frames shards: windows per segment (0: per-sample)")
    args = ap.parse_args(argv)
    if args.shards:
        cases = [(args.shards, args.samples or 200, args.workers, args.batch, args.interleave, None)]
    else:
        cases = [(24, 200, 2, 16, 4, 0.02), (1000, 1000, 8, 64, 4, 0.01)]
    print(f"{'plan':62s} {'sequential':>10s} " + " ".join(f"{'block, ' + k:>26s}" for k in SAMPLE_BYTES)
          + f" {'global':>8s} {'target':>7s}")
    for shards, n, workers, batch, k, target in cases:
        topo = Topology(world_size=args.world_size, num_workers=workers, batch_size=batch, interleave=k)
        sizes = [n] * shards
        old = repeat_rate(sizes, 17_800, topo, "sequential", args.seed)
        new = [repeat_rate(sizes, b, topo, "block", args.seed, args.segment) for b in SAMPLE_BYTES.values()]
        fresh = (batch - 1) / (shards * n - 1)
        name = f"{shards} x {n}, {args.world_size} rank(s) x {workers} workers, batch {batch}, interleave {k}"
        print(f"{name:62s} {old:10.2%} " + " ".join(f"{x:26.2%}" for x in new) + f" {fresh:8.3%} "
              + (f"{target:7.0%}" if target else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
