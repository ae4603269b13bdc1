"""Helpers of the pipeline tests (user stages, per-sample randomness), and the fresh-process half of their
resume tests.

As a module (imported by tests/test_pipeline.py): an augmentation stage that draws from the per-sample
generator (torch ops through `wdspq.torch_generator`, numpy noise, and a second `rng=True` stage), a loader
built from a job dict with those stages, and digests of batches and of each window's augmented values.

As a script: ``python tests/pipeline_child.py JOBS.json OUT.json`` -- for each job, build a fresh augmented
stream + loader in this new process, load the saved state, iterate to the end of the epoch and write the
remaining batches' digests (and the final state) to OUT.json. Not collected by pytest.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

AUGMENTED = ("frames", "observations", "actions", "draw")


def augment(sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """Random shift and gain of every frame (torch, seeded per window), Gaussian noise on the states (numpy)."""
    import wdspq

    g = wdspq.torch_generator(rng)
    dy, dx = torch.randint(-3, 4, (2,), generator=g).tolist()
    gain = 0.7 + 0.6 * torch.rand((), generator=g)
    frames = torch.roll(sample["frames"], (dy, dx), dims=(-2, -1)).float() * gain
    sample["frames"] = frames.clamp(0, 255).round().to(torch.uint8)
    obs = sample["observations"]
    sample["observations"] = obs + torch.from_numpy(rng.normal(0, 0.05, obs.shape).astype(np.float32))
    return sample


def draw(sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """A second rng stage: its own generator per window (another stream than the first stage's)."""
    sample["draw"] = torch.tensor(rng.random(), dtype=torch.float64)
    return sample


def scale_actions(a: torch.Tensor) -> torch.Tensor:
    return a * 2


def make_stream(job: dict[str, Any]) -> Any:
    """A ShardStream with the test's user stages, added with webdataset's API."""
    import wdspq

    stream = wdspq.ShardStream(job["source"], shuffle=True, seed=job.get("seed", 0),
                               rank=job.get("rank", 0), world_size=job.get("world_size", 1))
    return stream.map(augment, rng=True).map_dict(actions=scale_actions).map(draw, rng=True)


def make_loader(job: dict[str, Any]) -> Any:
    import wdspq

    return wdspq.StreamLoader(make_stream(job), batch_size=job["batch_size"], num_workers=job["num_workers"],
                              persistent_workers=job.get("persistent_workers", False))


def batch_digest(batch: dict[str, torch.Tensor]) -> str:
    """sha256 over every key, dtype, shape and value of a batch (bit for bit)."""
    h = hashlib.sha256()
    for k in sorted(batch):
        v = batch[k].contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.numpy().tobytes())
    return h.hexdigest()


def window_digests(batches: list[dict[str, torch.Tensor]]) -> dict[int, str]:
    """window_index -> sha256 of that window's augmented values (pads left out)."""
    out = {}
    for b in batches:
        for i, w in enumerate(b["window_index"].tolist()):
            if w >= 0:
                h = hashlib.sha256()
                for k in AUGMENTED:
                    h.update(b[k][i].contiguous().numpy().tobytes())
                assert w not in out, f"window {w} delivered twice"
                out[w] = h.hexdigest()
    return out


def take(loader: Any, n: int | None = None) -> list[dict[str, torch.Tensor]]:
    """The next `n` batches of a new iteration of `loader` (all remaining when None), copied out."""
    out: list[dict[str, torch.Tensor]] = []
    if n == 0:
        return out
    for batch in loader:
        out.append({k: v.clone() for k, v in batch.items()})
        if n is not None and len(out) == n:
            break
    return out


def main(argv: list[str]) -> int:
    jobs_path, out_path = argv
    results = []
    for job in json.loads(Path(jobs_path).read_text()):
        loader = make_loader(job)
        state = json.loads(Path(job["state"]).read_text())
        loader.load_state_dict(state)
        loader.set_epoch(state["epoch"])
        rest = take(loader)
        results.append({"batches": [batch_digest(b) for b in rest],
                        "windows": {str(k): v for k, v in window_digests(rest).items()},
                        "state": loader.state_dict()})
    Path(out_path).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
