"""Deterministic synthetic episodes: 100 Hz actions, 50 Hz observations, an image and one clip per camera.

Each camera runs on its own clock (its own start, fps, optional jitter and dropped frames); every frame
carries its camera frame number as a bar code (`read_frame_counter`), so tests can check which frame a
window delivered. An optional high-rate signal stream `force` exercises multi-rate windows. Clips are
FFV1 (lossless, byte-deterministic) unless `video_codec="h264"`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import SchemaError
from ..media import encode_clip, encode_png, is_lossless
from ..table import (
    Episode,
    TableMeta,
    TableWriter,
    actions_stream,
    camera_stream,
    image_stream,
    signal_stream,
)

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
FORCE_DIM = 6
EPOCH_BASE = 1_742_918_912.0  # recordings carry epoch timestamps; float64 keeps them exact to ~1e-7 s


def frame_code_pixels(index: int, height: int, width: int) -> tuple[slice, list[slice]]:
    """Where the frame counter is drawn: 10 bars across the top quarter, one bit each (LSB first)."""
    bar_w = max(1, width // 10)
    rows = slice(0, max(2, height // 4))
    return rows, [slice(b * bar_w, (b + 1) * bar_w) for b in range(10)]


def read_frame_counter(frame_chw: np.ndarray) -> int:
    """Decode the counter `render_frames` drew into a (3, H, W) frame (robust to lossy compression)."""
    frame_chw = np.asarray(frame_chw)  # a torch tensor works too
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


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that shapes a synthetic table besides the episode index (one picklable job argument)."""

    seed: int = 0
    seconds: float = 5.0
    image_size: int = 64
    video_size: int = 96
    cameras: tuple[str, ...] = ("frames",)
    camera_fps: tuple[float, ...] = (20.0,)
    frame_jitter: float = 0.0
    frame_drop: float = 0.0
    force_hz: float | None = None
    video_codec: str = "ffv1"

    def __post_init__(self) -> None:
        if len(self.camera_fps) == 1 and len(self.cameras) > 1:
            object.__setattr__(self, "camera_fps", tuple(self.camera_fps) * len(self.cameras))
        if len(self.camera_fps) != len(self.cameras):
            raise SchemaError(f"{len(self.cameras)} cameras but {len(self.camera_fps)} frame rates")
        for name, fps in zip(self.cameras, self.camera_fps):
            if not fps > 0:
                raise SchemaError(f"camera {name!r}: fps must be > 0, got {fps}")
            if not 0 <= self.frame_jitter < 0.5 / fps:
                raise SchemaError(
                    f"camera {name!r}: frame jitter {self.frame_jitter} s must be >= 0 and below half a frame "
                    f"interval ({0.5 / fps:g} s at {fps:g} fps), so frames stay in order"
                )
        if not 0 <= self.frame_drop < 1:
            raise SchemaError(f"frame drop probability must be in [0, 1), got {self.frame_drop}")
        if self.force_hz is not None and not self.force_hz > 0:
            raise SchemaError(f"the force stream's rate must be > 0 Hz, got {self.force_hz}")


def camera_times(cfg: SyntheticConfig, index: int, c: int, t_start: float, t_end: float) -> tuple[np.ndarray, np.ndarray]:
    """(frame numbers kept, their times) of camera `c`: its own start and fps, jitter, dropped frames."""
    rng = np.random.default_rng([cfg.seed, index, 1000 + c])
    fps = cfg.camera_fps[c]
    t0 = t_start - 0.02 - 0.007 * c  # every camera starts on its own clock, before the first action
    n = max(1, int(round((t_end - t0) * fps)) + 1)
    numbers = np.arange(n, dtype=np.int64)
    ts = t0 + numbers / fps
    if cfg.frame_jitter:
        ts = ts + rng.uniform(-cfg.frame_jitter, cfg.frame_jitter, size=n)
    if cfg.frame_drop:
        keep = rng.random(n) >= cfg.frame_drop
        keep[0] = True
        numbers, ts = numbers[keep], ts[keep]
    return numbers, ts


def make_episode(index: int, cfg: SyntheticConfig) -> Episode:
    """One synthetic episode; a pure function of (index, config), so builds are reproducible."""
    rng = np.random.default_rng([cfg.seed, index])
    length = cfg.seconds * float(rng.uniform(0.6, 1.4))
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
    img = render_frames(1, cfg.image_size, cfg.image_size, rng)[0]
    signals = {"observations": (obs_ts, observations)}
    if cfg.force_hz:
        n_f = max(2, int(round(length * cfg.force_hz)))
        force_ts = start + 0.001 + np.arange(n_f, dtype=np.float64) / cfg.force_hz
        tf = np.arange(n_f)[:, None] / cfg.force_hz
        force = (np.sin(2 * np.pi * rng.uniform(1, 5, size=FORCE_DIM) * tf) * 10).astype(np.float32)
        signals["force"] = (force_ts, force)
    cameras = {}
    for c, name in enumerate(cfg.cameras):
        numbers, ts = camera_times(cfg, index, c, start, float(action_ts[-1]))
        crng = np.random.default_rng([cfg.seed, index, c])
        frames = render_frames(int(numbers[-1]) + 1, cfg.video_size, cfg.video_size, crng)[numbers]
        cameras[name] = (encode_clip(frames, codec=cfg.video_codec, fps=int(round(cfg.camera_fps[c]))), ts)
    return Episode(
        episode_id=f"synthetic-{cfg.seed}-{index:06d}",
        text=text,
        action_ts=action_ts,
        actions=actions,
        signals=signals,
        cameras=cameras,
        images={"image": encode_png(img)},
    )


def _make_star(args: tuple) -> Episode:
    return make_episode(*args)


def build_synthetic(
    out: str | os.PathLike,
    episodes: int = 20,
    seconds: float = 5.0,
    image_size: int = 64,
    video_size: int = 96,
    fps: float = 20,
    seed: int = 0,
    workers: int = 1,
    row_group_size: int = 16,
    progress: bool = True,
    cameras: Sequence[str] = ("frames",),
    camera_fps: Sequence[float] | None = None,
    frame_jitter: float = 0.0,
    frame_drop: float = 0.0,
    force_hz: float | None = None,
    video_codec: str = "ffv1",
    overwrite: bool = True,
) -> TableMeta:
    """Write a synthetic table of `episodes` episodes (lengths vary 0.6-1.4 x `seconds`) to `out`, atomically.

    `cameras` name the cameras (each at `camera_fps[i]`, default `fps`), `frame_jitter` (s) and
    `frame_drop` (probability) perturb their clocks, `force_hz` adds a 6-D `force` signal at that rate.
    Byte-deterministic for any `workers`. Memory is bounded by one row group plus the episodes in flight.
    """
    if episodes < 1:
        raise SchemaError("episodes must be >= 1")
    cfg = SyntheticConfig(seed=seed, seconds=seconds, image_size=image_size, video_size=video_size,
                          cameras=tuple(cameras), camera_fps=tuple(float(f) for f in (camera_fps or [fps])),
                          frame_jitter=float(frame_jitter), frame_drop=float(frame_drop),
                          force_hz=float(force_hz) if force_hz else None, video_codec=video_codec)
    jobs = [(i, cfg) for i in range(episodes)]

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

    streams = [actions_stream(ACTION_DIM, [f"a{i}" for i in range(ACTION_DIM)]),
               signal_stream("observations", OBS_DIM, [f"s{i}" for i in range(OBS_DIM)])]
    if cfg.force_hz:
        streams.append(signal_stream("force", FORCE_DIM, ["fx", "fy", "fz", "tx", "ty", "tz"]))
    lossless = is_lossless(video_codec)
    streams += [camera_stream(name, video_size, video_size, codec=video_codec, lossless=lossless) for name in cfg.cameras]
    streams.append(image_stream("image", image_size, image_size))
    with TableWriter(out, streams, row_group_size=row_group_size, overwrite=overwrite) as writer:
        for ep in tqdm(produce(), total=episodes, desc=f"build {Path(out).name}", unit="ep", disable=not progress):
            writer.add(ep)
        return writer.close(source=f"synthetic({json.dumps(dataclasses.asdict(cfg), sort_keys=True)}, episodes={episodes})")
