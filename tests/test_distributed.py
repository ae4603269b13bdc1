"""R1 with real processes: `torchrun --standalone --nproc_per_node 2` (gloo), 2 DataLoader workers per
rank (tests/dist_child.py). Marked slow: about 15 s on 2 cores, most of it process start-up."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from stream_child import make_export, make_loader, real, take

from wdspq.cursor import CursorState, merge_states, set_digest_of
from wdspq.shardfmt import load_manifest

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_torchrun_two_ranks_two_workers_exactly_once(small_table, tokenizer_path, tmp_path_factory, tmp_path):
    export = make_export(small_table, tokenizer_path, tmp_path_factory.getbasetemp())
    n = load_manifest(export).num_windows
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "dist_child.py"), export, str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    recs = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in recs] == [2, 2]

    # R1: every window exactly once across ranks, pads flagged, equal batch counts
    assert len(recs[0]["batches"]) == len(recs[1]["batches"])
    ids = real(recs[0]["batches"] + recs[1]["batches"])
    assert not [i for i, c in Counter(ids).items() if c > 1]
    assert sorted(ids) == list(range(n))

    # state_dict() is a collective: both ranks got the same merged (full) state, mid-epoch and at the end
    mid = [r["mid"] for r in recs]
    assert mid[0] == mid[1]
    st = CursorState.from_dict(mid[0])
    assert st.is_full() and st.known_ranks() == [0, 1] and not st.complete
    k = recs[0]["mid_batch"] + 1
    head = recs[0]["batches"][:k] + recs[1]["batches"][:k]
    assert st.total_set_digest() == set_digest_of(real(head))
    assert recs[0]["final"] == recs[1]["final"] and recs[0]["final"]["complete"]
    assert CursorState.from_dict(recs[0]["final"]).total_set_digest() == set_digest_of(range(n))

    # state_dict(gather=False) is per rank and merges into the collective's state; one rank alone errs
    assert merge_states([r["local"] for r in recs]) == recs[0]["final"]
    alone = (tmp_path / "alone.txt").read_text()
    assert "not every rank called it within 3 s" in alone and "gather=False" in alone

    # the merged mid-epoch state finishes the epoch elsewhere (here: one process, no workers)
    loader = make_loader(dict(source=export, seed=13, batch_size=8, num_workers=0))
    loader.load_state_dict(mid[0])
    rest = [b["window_index"].tolist() for b in take(loader)]
    assert sorted(real(head + rest)) == list(range(n))
