"""Fresh-process halves of the mixture tests (not collected by pytest).

``python tests/mixture_child.py resume JOB.json OUT.json``: build the mixture stream and loader of the
job in this new process, load the job's state, iterate to the end of its epoch and write the remaining
batches as ``[[source_index, window_index], ...]`` lists (and the final state) to OUT.json (R3); with
``job["epochs"]`` it then goes on through the following epochs up to that one (exclusive), appending their
batches (a state saved at the end of an epoch continues into the next one).

``python tests/mixture_child.py train JOB.json DIR``: a training loop over ``job["epochs"]`` epochs that
appends each batch's pairs to DIR/log.jsonl and then saves ``{"state", "logged"}`` atomically to
DIR/state.json; started again after a SIGKILL it truncates the log to what the saved state covers, loads
the state and continues (the kill-loop test).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def make_loader(job: dict[str, Any]) -> Any:
    import wdspq

    sources = [wdspq.Source(p, weight=w, rename=r or {}) for p, w, r in job["sources"]]
    stream = wdspq.ShardStream(sources, seed=job.get("seed", 0), samples_per_epoch=job.get("samples_per_epoch"),
                               rank=job.get("rank", 0), world_size=job.get("world_size", 1),
                               interleave=job.get("interleave", 4), storage_options=job.get("storage_options"))
    return wdspq.StreamLoader(stream, batch_size=job["batch_size"], num_workers=job.get("num_workers", 0))


def pairs(batch: Any) -> list[list[int]]:
    """[[source_index, window_index], ...] of a batch (pads have window_index -1)."""
    return [[int(s), int(w)] for s, w in zip(batch["source_index"].tolist(), batch["window_index"].tolist())]


def resume(job_path: str, out_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    loader = make_loader(job)
    state = job["state"]
    loader.load_state_dict(state)
    loader.set_epoch(state["epoch"])
    rest = [pairs(b) for b in loader]
    for epoch in range(int(state["epoch"]) + 1, int(job.get("epochs", 0))):
        loader.set_epoch(epoch)
        rest += [pairs(b) for b in loader]
    Path(out_path).write_text(json.dumps({"batches": rest, "state": loader.state_dict()}))


def train(job_path: str, folder: str) -> None:
    job = json.loads(Path(job_path).read_text())
    out = Path(folder)
    log, state_file = out / "log.jsonl", out / "state.json"
    loader = make_loader(job)
    logged = 0
    if state_file.exists():
        saved = json.loads(state_file.read_text())
        logged = saved["logged"]
        lines = log.read_text().splitlines(keepends=True)[:logged] if log.exists() else []
        log.write_text("".join(lines))
        loader.load_state_dict(saved["state"])
    start = loader.epoch
    with open(log, "a") as f:
        for epoch in range(start, job["epochs"]):
            loader.set_epoch(epoch)
            for batch in loader:
                f.write(json.dumps([epoch, pairs(batch)]) + "\n")
                f.flush()
                logged += 1
                tmp = state_file.with_suffix(".tmp")
                tmp.write_text(json.dumps({"state": loader.state_dict(), "logged": logged}))
                os.replace(tmp, state_file)
    (out / "done").write_text("ok")


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    {"resume": resume, "train": train}[mode](*args)
