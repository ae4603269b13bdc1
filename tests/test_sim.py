"""`wdspq build sim`: a valid 2-camera table of rendered frames that are not blank and differ between
cameras, each camera on its own clock, deterministic for a seed."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

import wdspq
from wdspq.cli import main as cli_main
from wdspq.table.validate import validate_table

os.environ.setdefault("MUJOCO_GL", "egl")  # read when mujoco is first imported: headless rendering
mujoco = pytest.importorskip("mujoco", reason="MuJoCo is not installed (pip install 'wdspq[sim]')")


@pytest.fixture(scope="module")
def sim_table(tmp_path_factory) -> str:
    from wdspq.build import build_sim

    out = tmp_path_factory.mktemp("sim") / "sim.parquet"
    try:
        build_sim(out, episodes=2, seconds=1.5, video_size=48, seed=4, progress=False)
    except wdspq.WdspqError as e:
        if "cannot render" in str(e):
            pytest.skip(f"MuJoCo cannot render on this machine: {e}")
        raise
    return str(out)


def test_sim_table_is_valid_with_two_cameras_on_their_own_clocks(sim_table):
    meta = validate_table(sim_table, full_media=True)
    assert [c.name for c in meta.cameras] == ["front", "wrist"]
    assert (meta.actions.rate_hz, meta.stream("joints").rate_hz) == (20.0, 100.0)
    assert (meta.stream("front").rate_hz, meta.stream("wrist").rate_hz) == (20.0, 12.5)


def test_sim_frames_are_real_pictures(sim_table, tokenizer_path):
    ds = wdspq.ParquetWindowDataset(sim_table, wdspq.WindowSpec(acts_length_sec=0.5, obs_length_sec=0.5),
                                    tokenizer=tokenizer_path)
    ep = ds.episode(0)
    front, wrist = ep.cameras["front"].frames, ep.cameras["wrist"].frames
    for frames in (front, wrist):
        assert frames.std() > 10 and len(np.unique(frames[0])) > 50  # textured, lit: not a flat synthetic frame
    assert not np.array_equal(front[0], wrist[0])
    assert np.abs(front[-1].astype(int) - front[0].astype(int)).mean() > 0.5  # the scene moves
    assert ds.episode(1).cameras["front"].frames[0].tobytes() != front[0].tobytes()  # objects placed per episode


def test_sim_is_deterministic_for_a_seed(sim_table, tmp_path):
    again = tmp_path / "again.parquet"
    assert cli_main(["build", "sim", str(again), "--episodes", "2", "--seconds", "1.5", "--video-size", "48",
                     "--seed", "4", "--no-progress"]) == 0
    sha = [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in (sim_table, again)]
    assert sha[0] == sha[1]
    assert cli_main(["build", "sim", str(again), "--episodes", "1", "--no-progress"]) == 2  # exists: refused
