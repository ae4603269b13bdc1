"""Shared helpers of the stream tests, and the fresh-process half of the R3 resume tests.

As a module (imported by tests/test_stream.py and tests/test_state.py): the small export the stream
tests share (built once per session), a map from shard position to window index, and helpers that
run a loader and compare runs. Not collected by pytest (the name does not start with ``test_``).

As a script: ``python tests/stream_child.py JOBS.json OUT.json`` -- for each job (source, loader
arguments, a saved state), build a fresh `ShardStream` + `StreamLoader` in this new process, load the
state, iterate to the end of the epoch and write the remaining batches' ``window_index`` lists (and
the final state) to OUT.json. This is how R3 is checked across a process boundary.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

# The small export every stream test uses: stride 3 over the conftest `small_table` gives 394 windows;
# 47 per shard gives 9 shards of 47 x 8 + 18 samples (uneven), so slots get uneven loads.
SPEC = dict(acts_length_sec=0.5, obs_length_sec=0.5, video_frame_offsets=[-1, 0], stride=3)
SAMPLES_PER_SHARD = 47
EXPORT_SEED = 3
_EXPORTS: dict[tuple[Any, ...], str] = {}


def make_export(table: str, tokenizer: str, root: Path, spec: dict[str, Any] | None = None,
                samples_per_shard: int = SAMPLES_PER_SHARD, seed: int = EXPORT_SEED, layout: str = "auto") -> str:
    """Export `table` under `root` once per session and argument set; returns the shard folder. `layout`:
    "auto" is the default encoding (shared frames); "per-sample" for tests of one member per sample."""
    import wdspq

    spec = dict(SPEC if spec is None else spec)
    key = (table, tokenizer, json.dumps(spec, sort_keys=True), samples_per_shard, seed, layout)
    if key not in _EXPORTS:
        out = Path(root) / f"export-{len(_EXPORTS)}"
        wdspq.export_shards(table, out, wdspq.WindowSpec(**spec), tokenizer=tokenizer,
                            samples_per_shard=samples_per_shard, seed=seed, progress=False,
                            encoding=wdspq.shardfmt.Encoding(layout=layout))
        _EXPORTS[key] = str(out)
    return _EXPORTS[key]


def window_map(source: str) -> dict[tuple[int, int], int]:
    """(shard, position) -> window_index of every sample of an export, read shard by shard."""
    from wdspq.shardfmt import load_manifest, read_run

    m = load_manifest(source)
    return {
        (s, p): int(sample["window_index"])
        for s, n in enumerate(m.shard_sizes)
        for p, sample in enumerate(read_run(m, s, 0, n))
    }


def indices(batches: list[Any]) -> list[list[int]]:
    """window_index lists of a list of batches (pads are -1)."""
    return [b["window_index"].tolist() for b in batches]


def real(lists: list[list[int]]) -> list[int]:
    """Every non-pad window index of a run, flattened."""
    return [i for b in lists for i in b if i != -1]


def take(loader: Any, n: int | None = None) -> list[Any]:
    """The next `n` batches of a new iteration of `loader` (all remaining when None)."""
    out = []
    if n == 0:
        return out
    for batch in loader:
        out.append(batch)
        if n is not None and len(out) == n:
            break
    return out


def make_loader(job: dict[str, Any]) -> Any:
    """A fresh ShardStream + StreamLoader from a job dict (source, seed, batch_size, num_workers, ...)."""
    import wdspq

    stream = wdspq.ShardStream(job["source"], shuffle=job.get("shuffle", True), seed=job.get("seed", 0),
                               interleave=job.get("interleave", 4), even=job.get("even", "pad"),
                               rank=job.get("rank", 0), world_size=job.get("world_size", 1),
                               shard_order=job.get("shard_order"))
    return wdspq.StreamLoader(stream, batch_size=job["batch_size"], num_workers=job["num_workers"],
                              persistent_workers=job.get("persistent_workers", False))


def main(argv: list[str]) -> int:
    """Run every job of JOBS.json in this process and write the results to OUT.json."""
    jobs_path, out_path = argv
    jobs = json.loads(Path(jobs_path).read_text())
    results = []
    for job in jobs:
        loader = make_loader(job)
        state = json.loads(Path(job["state"]).read_text())
        loader.load_state_dict(state)
        loader.set_epoch(state["epoch"])  # the documented restart loop: set_epoch(state epoch) keeps the position
        rest = indices(take(loader))
        results.append({"batches": rest, "state": loader.state_dict()})
    Path(out_path).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    np.seterr(all="raise")
    sys.exit(main(sys.argv[1:]))
