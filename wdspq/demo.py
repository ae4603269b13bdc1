"""The main job end to end: build a synthetic table, export shards, stream an epoch, checkpoint and resume.

`wdspq demo` runs it; it is also the smoke test a new user runs first. Every step prints what it did
and how fast, and the resumed run is checked against the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from . import interrupt
from .errors import WdspqError
from .windows import WindowSpec


def _epoch(loader: Any, stop_after: int | None = None) -> tuple[list[list[int]], int, float]:
    batches: list[list[int]] = []
    samples = 0
    t = time.perf_counter()
    for i, batch in enumerate(loader):
        batches.append(batch["window_index"].tolist())
        samples += len(batch["window_index"])
        if stop_after is not None and i + 1 >= stop_after:
            break
    return batches, samples, time.perf_counter() - t


def run_demo(
    workdir: str | os.PathLike = "data/demo",
    episodes: int = 12,
    seconds: float = 6.0,
    video_size: int = 96,
    batch_size: int = 32,
    num_workers: int = 2,
    tokenizer: str | None = None,
    progress: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Build -> export -> stream -> checkpoint mid-epoch -> resume in a fresh loader; returns the figures."""
    from .build import build_synthetic
    from .export import export_shards
    from .stream import ShardStream, StreamLoader

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    table, shards = work / "table.parquet", work / "shards"
    from .text import default_tokenizer

    tokenizer = tokenizer or default_tokenizer()
    spec = WindowSpec(acts_length_sec=1.0, obs_length_sec=1.0, video_frame_offsets=[-2, -1, 0], stride=5)

    t = time.perf_counter()
    meta = build_synthetic(table, episodes=episodes, seconds=seconds, video_size=video_size, seed=0,
                           workers=min(2, os.cpu_count() or 1), progress=progress)
    streams = ", ".join(
        f"{st.name} {st.width}-D at {st.rate_hz:g} Hz" if st.kind in ("actions", "signal")
        else f"{st.kind} {st.name} {st.height}x{st.frame_width}" for st in meta.streams
    )
    log(f"[1/4] built {table}: {meta.num_episodes} episodes ({streams}), "
        f"{table.stat().st_size / 2**20:.1f} MiB in {time.perf_counter() - t:.1f} s")

    t = time.perf_counter()
    # overwrite: the demo's own folder; one left by an older wdspq (another default encoding) is replaced
    manifest = export_shards(table, shards, spec, tokenizer=tokenizer, samples_per_shard=200, seed=0,
                             workers=min(2, os.cpu_count() or 1), progress=progress, overwrite=True)
    interrupt.check()  # a SIGTERM during the export's clean-up after its manifest (shielded there) stops here
    dt = time.perf_counter() - t
    n = manifest["num_windows"]
    total = sum(s["bytes"] for s in manifest["shards"])
    log(f"[2/4] exported {n} windows into {len(manifest['shards'])} shards ({total / 2**20:.1f} MiB, "
        f"{total / n / 1024:.1f} KiB/window) in {dt:.1f} s ({n / dt:.0f} windows/s)")

    stream = ShardStream(shards, shuffle=True, seed=0)
    loader = StreamLoader(stream, batch_size=batch_size, num_workers=num_workers)
    full, samples, dt = _epoch(loader)
    real = sorted(w for b in full for w in b if w >= 0)
    if real != list(range(n)):
        raise WdspqError("demo: the streamed epoch did not deliver every window exactly once")
    log(f"[3/4] streamed one epoch: {samples} samples in {len(full)} batches of {batch_size} with "
        f"{num_workers} workers, {samples / dt:.0f} samples/s; every window exactly once")

    half = len(full) // 2
    loader = StreamLoader(ShardStream(shards, shuffle=True, seed=0), batch_size=batch_size, num_workers=num_workers)
    first, _, _ = _epoch(loader, stop_after=half)
    state_path = work / "loader_state.json"
    state_path.write_text(json.dumps(loader.state_dict()))
    resumed = StreamLoader(ShardStream(shards, shuffle=True, seed=0), batch_size=batch_size, num_workers=num_workers)
    resumed.load_state_dict(json.loads(state_path.read_text()))
    rest, _, dt = _epoch(resumed)
    same = first + rest == full
    log(f"[4/4] stopped after {half} batches, saved the state ({state_path.stat().st_size} bytes of JSON), "
        f"resumed in a fresh loader: {len(rest)} more batches in {dt:.2f} s; "
        f"{'identical to' if same else 'DIFFERENT FROM'} the uninterrupted epoch")
    if not same:
        raise WdspqError("demo: the resumed epoch differs from the uninterrupted one")
    return {"windows": n, "shards": len(manifest["shards"]), "samples_per_s": samples / dt if dt else 0.0,
            "resume_identical": same}
