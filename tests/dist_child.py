"""One rank of the torchrun R1 test (tests/test_distributed.py); not collected by pytest.

``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_child.py SOURCE OUT_DIR``:
each rank joins a gloo process group, iterates one epoch of `StreamLoader(num_workers=2)` (the rank and
world size come from torch.distributed), calls the collective `state_dict()` after batch MID_BATCH and at
the end, and writes its batches' window_index lists and both states to OUT_DIR/rank-<r>.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch.distributed as dist

import wdspq

BATCH_SIZE = 8
MID_BATCH = 3
SEED = 13


def main(source: str, out_dir: str) -> int:
    """Run this rank's epoch and write its record."""
    dist.init_process_group("gloo")
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
    local = loader.state_dict(gather=False)  # not a collective: this rank's own position
    record = {"rank": rank, "world_size": world, "batches": batches, "mid": mid, "final": final,
              "mid_batch": MID_BATCH, "local": local}
    Path(out_dir, f"rank-{rank}.json").write_text(json.dumps(record))
    dist.barrier()
    if rank == 0:  # the "save on rank 0 only" mistake: a clear error, not a hang
        try:
            loader.state_dict(timeout=3.0)
        except wdspq.StateError as e:
            Path(out_dir, "alone.txt").write_text(str(e))
            return 0  # the group is broken now (as after any failed collective): leave it
    else:
        time.sleep(4.0)  # alive but not calling state_dict(): rank 0 must time out, not hang
        return 0
    return 1  # rank 0 must have hit the StateError (no destroy_process_group: the group is unusable now)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
