"""One rank of the torchrun R1 test (tests/test_distributed.py); not collected by pytest.

``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_child.py SOURCE OUT_DIR``:
each rank joins a gloo process group, iterates one epoch of `StreamLoader(num_workers=2)` (the rank and
world size come from torch.distributed), calls the collective `state_dict()` after batch MID_BATCH and at
the end, and writes its batches' window_index lists and both states to OUT_DIR/rank-<r>.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

import wdspq

BATCH_SIZE = 8
MID_BATCH = 3
SEED = 13


def main(source: str, out_dir: str) -> int:
    """Run this rank's epoch and write its record."""
    dist.init_process_group("gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        stream = wdspq.ShardStream(source, seed=SEED)
        assert (stream.rank, stream.world_size) == (rank, world)
        loader = wdspq.StreamLoader(stream, batch_size=BATCH_SIZE, num_workers=2)
        batches, mid = [], None
        for t, batch in enumerate(loader):
            batches.append(batch["window_index"].tolist())
            if t == MID_BATCH:
                mid = loader.state_dict()  # collective: every rank calls it at the same batch
        final = loader.state_dict()
        record = {"rank": rank, "world_size": world, "batches": batches, "mid": mid, "final": final,
                  "mid_batch": MID_BATCH}
        Path(out_dir, f"rank-{rank}.json").write_text(json.dumps(record))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
