"""Deterministic synthetic episodes: 100 Hz actions, 50 Hz observations, a PNG and a 20 fps clip each."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..media import encode_mp4, encode_png
from ..schema import Episode, TableMeta, TableWriter

TASKS = (
    "pick up the red cube",
    "put the spoon in the drawer",
    "open the top cabinet door",
    "stack the blue block on the green block",
    "wipe the table with the sponge",
    "pour water into the cup",
    "push the bowl to the left",
)

ACTION_DIM = 7
OBS_DIM = 12
ACTION_HZ = 100.0
OBS_HZ = 50.0
EPOCH_BASE = 1_742_918_912.0  # recordings carry epoch timestamps; float64 keeps them exact to ~1e-7 s


def frame_code_pixels(index: int, height: int, width: int) -> tuple[slice, list[slice]]:
    """Where the frame counter is drawn: 10 bars across the top quarter, one bit each (LSB first)."""
    bar_w = max(1, width // 10)
    rows = slice(0, max(2, height // 4))
    return rows, [slice(b * bar_w, (b + 1) * bar_w) for b in range(10)]


def read_frame_counter(frame_chw: np.ndarray) -> int:
    """Decode the counter `render_frames` drew into a (3, H, W) frame (robust to lossy compression)."""
    _, h, w = frame_chw.shape
    rows, bars = frame_code_pixels(0, h, w)
    value = 0
    for b, cols in enumerate(bars):
        if frame_chw[:, rows, cols].mean() > 127:
            value |= 1 << b
    return value


def render_frames(n: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(n, H, W, 3) uint8 frames: a moving gradient background and the frame number as a 10-bit bar code."""
    yy, xx = np.mgrid[0:height, 0:width]
    color = rng.integers(40, 200, size=3)
    frames = np.empty((n, height, width, 3), dtype=np.uint8)
    rows, bars = frame_code_pixels(0, height, width)
    for i in range(n):
        base = (xx + yy + 3 * i) % 64
        for c in range(3):
            frames[i, :, :, c] = (color[c] // 2 + base).astype(np.uint8)
        for b, cols in enumerate(bars):
            frames[i, rows, cols, :] = 255 if (i >> b) & 1 else 0
    return frames


def make_episode(
    index: int,
    seed: int,
    seconds: float,
    image_size: int,
    video_size: int,
    fps: int,
    with_video: bool = True,
    with_image: bool = True,
) -> Episode:
    """One synthetic episode; a pure function of (index, seed, sizes), so builds are reproducible."""
    rng = np.random.default_rng([seed, index])
    length = seconds * float(rng.uniform(0.6, 1.4))
    start = EPOCH_BASE + 1000.0 * index + float(rng.uniform(0, 1))
    n_a = max(2, int(round(length * ACTION_HZ)))
    n_o = max(2, int(round(length * OBS_HZ)))
    action_ts = start + np.arange(n_a, dtype=np.float64) / ACTION_HZ
    obs_ts = start + 0.003 + np.arange(n_o, dtype=np.float64) / OBS_HZ
    ta = np.arange(n_a)[:, None] / ACTION_HZ
    freq = rng.uniform(0.1, 1.0, size=ACTION_DIM)
    phase = rng.uniform(0, 2 * np.pi, size=ACTION_DIM)
    actions = np.sin(2 * np.pi * freq * ta + phase).astype(np.float32)
    to = np.arange(n_o)[:, None] / OBS_HZ
    ofreq = rng.uniform(0.05, 0.5, size=OBS_DIM)
    ophase = rng.uniform(0, 2 * np.pi, size=OBS_DIM)
    observations = (np.cos(2 * np.pi * ofreq * to + ophase) * rng.uniform(0.5, 2.0, size=OBS_DIM)).astype(np.float32)
    text = TASKS[int(rng.integers(len(TASKS)))]
    image = video = None
    video_t0 = start - 0.02
    if with_image:
        img = render_frames(1, image_size, image_size, rng)[0]
        image = encode_png(img)
    if with_video:
        n_f = max(1, int(round((action_ts[-1] - video_t0) * fps)) + 1)
        video = encode_mp4(render_frames(n_f, video_size, video_size, rng), fps=fps)
    return Episode(
        episode_id=f"synthetic-{seed}-{index:06d}",
        text=text,
        action_ts=action_ts,
        actions=actions,
        observation_ts=obs_ts,
        observations=observations,
        image=image,
        video=video,
        video_t0=video_t0,
    )


def _make_star(args: tuple) -> Episode:
    return make_episode(*args)


def build_synthetic(
    out: str | os.PathLike,
    episodes: int = 20,
    seconds: float = 5.0,
    image_size: int = 64,
    video_size: int = 96,
    fps: int = 20,
    seed: int = 0,
    workers: int = 1,
    row_group_size: int = 16,
    progress: bool = True,
) -> TableMeta:
    """Write a synthetic table of `episodes` episodes (lengths vary 0.6-1.4 x `seconds`) to `out`, atomically.

    Memory is bounded by one row group plus the episodes in flight, whatever `episodes` is.
    """
    if episodes < 1:
        raise ValueError("episodes must be >= 1")
    jobs = [(i, seed, seconds, image_size, video_size, fps) for i in range(episodes)]

    def produce() -> Iterator[Episode]:
        if workers <= 1:
            yield from map(_make_star, jobs)
            return
        # Executor.map would submit every job at once and keep finished episodes until the writer takes
        # them: memory would grow with the episode count. Keep a bounded window in flight instead, in order.
        with ProcessPoolExecutor(workers) as pool:
            todo = iter(jobs)
            pending = deque(pool.submit(_make_star, job) for job in islice(todo, 2 * workers))
            try:
                while pending:
                    ep = pending.popleft().result()
                    job = next(todo, None)
                    if job is not None:
                        pending.append(pool.submit(_make_star, job))
                    yield ep
            finally:
                for fut in pending:
                    fut.cancel()

    with TableWriter(out, ACTION_DIM, OBS_DIM, row_group_size=row_group_size) as writer:
        for ep in tqdm(produce(), total=episodes, desc=f"build {Path(out).name}", unit="ep", disable=not progress):
            writer.add(ep)
        return writer.close(
            video_fps=float(fps),
            frame_height=video_size,
            frame_width=video_size,
            image_height=image_size,
            image_width=image_size,
            source=f"synthetic(seed={seed}, episodes={episodes}, seconds={seconds})",
            action_names=[f"a{i}" for i in range(ACTION_DIM)],
            observation_names=[f"s{i}" for i in range(OBS_DIM)],
        )
