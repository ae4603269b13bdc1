"""The window rules (docs/windows.md) against an independent oracle.

Every expected row here is computed from the raw arrays' *intended* times in exact arithmetic
(`fractions.Fraction`, integer microsecond ticks), never with wdspq's window code; the data is what the
library sees (float64 seconds, float32-stored LeRobot timestamps, epoch clocks). The first tests each
reproduce one defect of the earlier rule, then the oracle sweeps every window of three kinds of data.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from window_oracle import (
    dec,
    oracle_base_frame,
    oracle_length,
    oracle_resampled,
    oracle_rows,
)

from wdspq.errors import SpecError
from wdspq.table.rates import median_rate, rate_from_diffs
from wdspq.windows import CameraClip, EpisodeArrays, SampleLayout, WindowSpec, cut_window

F = Fraction


# --------------------------------------------------------------------------------------------------
# Data: intended exact times and the float arrays the library sees
# --------------------------------------------------------------------------------------------------
def counter(n: int, base: int, width: int = 2) -> np.ndarray:
    v = base + np.arange(n, dtype=np.float32)
    return np.stack([v, -v] + [v * 0 + c for c in range(width - 2)], axis=1).astype(np.float32)


def episode(a_T, a_ts, s_T, s_ts, cameras=None) -> tuple[EpisodeArrays, dict]:
    ep = EpisodeArrays(
        action_ts=np.asarray(a_ts, np.float64),
        actions=counter(len(a_ts), 1),
        signals={"state": (np.asarray(s_ts, np.float64), counter(len(s_ts), 1000))},
        cameras=cameras or {},
    )
    return ep, {"a": a_T, "s": s_T}


def lerobot_20hz(n: int = 40) -> tuple[EpisodeArrays, dict]:
    """LeRobot v2.1: one float32 timestamp k / fps per frame, shared by action and state."""
    T = [F(k, 20) for k in range(n)]
    ts = (np.arange(n, dtype=np.float32) / np.float32(20)).astype(np.float64)
    return episode(T, ts, T, ts)


def epoch_clock(n_a: int = 100, n_s: int = 200) -> tuple[EpisodeArrays, dict]:
    """Epoch seconds as `build hdf5` keeps them: 1.742918912e9 + k / rate."""
    E = 1_742_918_912
    a_T = [E + F(k, 50) for k in range(n_a)]
    s_T = [E + F(k, 100) for k in range(n_s)]
    return episode(a_T, E + np.arange(n_a) / 50, s_T, E + np.arange(n_s) / 100)


def jittered(seed: int, n_a: int = 200, n_s: int = 100, start_us: int = 3_000_000) -> tuple[EpisodeArrays, dict]:
    """100 Hz actions and a 50 Hz state, each sample off its grid by up to +-0.5 ms in 100 us steps (ticks)."""
    rng = np.random.default_rng(seed)
    a_us = start_us + 10_000 * np.arange(n_a) + 100 * rng.integers(-5, 6, n_a)
    s_us = start_us + 3_000 + 20_000 * np.arange(n_s) + 100 * rng.integers(-5, 6, n_s)
    return episode([F(int(u), 10**6) for u in a_us], a_us / 1e6, [F(int(u), 10**6) for u in s_us], s_us / 1e6)


DATA = {"lerobot20": (lerobot_20hz, 20, 20), "epoch": (epoch_clock, 50, 100), "jitter": (lambda: jittered(1), 100, 50)}
OFFSETS = [-0.25, -0.1, -0.05, -0.033, 0.0, 0.013, 0.05, 0.1, 0.2]


def _layout(r_a: float, r_s: float, cameras=()) -> SampleLayout:
    return SampleLayout(action_dim=2, action_rate_hz=r_a, signals=(("state", 2, r_s),), cameras=cameras)


def _cut(ep, spec, layout, k):
    return cut_window(ep, k, spec.resolve(layout), 0, 0)


# --------------------------------------------------------------------------------------------------
# The defects of the earlier rule, each reproduced
# --------------------------------------------------------------------------------------------------
def test_defect1_lerobot_state_history_is_past_not_future():
    """20 Hz LeRobot, offset -0.05 s, 0.1 s of state: every window holds [s_k-1, s_k]; k = 0 pads."""
    ep, _ = lerobot_20hz(142)
    spec = WindowSpec(acts_length_sec=0.1, obs_length_sec=0.1, obs_offset_sec=-0.05)
    layout = _layout(20.0, 20.0)
    wrong = []
    for k in range(142):
        s = _cut(ep, spec, layout, k)
        want = [k - 1, k]
        got = [int(v) - 1000 if m else None for v, m in zip(s["state"][:, 0], s["state_mask"])]
        if got != [r if r >= 0 else None for r in want]:
            wrong.append((k, got))
    assert wrong == [], f"{len(wrong)} of 142 windows hold other rows: {wrong[:5]}"


def test_defect2_positive_offsets_and_epoch_clocks():
    ts = np.arange(20) / 10  # a 10 Hz state whose time is its row index / 10
    ep = EpisodeArrays(action_ts=ts, actions=counter(20, 1), signals={"state": (ts, counter(20, 1000))})
    spec = WindowSpec(acts_length_sec=0.1, obs_length_sec=0.1, obs_offset_sec=0.1)
    rows = [_cut(ep, spec, _layout(10.0, 10.0), k) for k in (2, 18, 19)]
    assert int(rows[0]["state"][0, 0]) - 1000 == 3
    assert bool(rows[1]["state_mask"][0]) and int(rows[1]["state"][0, 0]) - 1000 == 19
    assert not rows[2]["state_mask"].any()  # past the end: masked
    # epoch clock at 100 Hz, offset -0.1 s: row k - 10 for every anchor at 100 Hz
    E = 1_742_918_912.0
    ts = E + np.arange(360) / 100
    ep = EpisodeArrays(action_ts=ts, actions=counter(360, 1), signals={"state": (ts, counter(360, 1000))})
    spec = WindowSpec(acts_length_sec=0.1, obs_length_sec=0.05, obs_offset_sec=-0.1)
    late = [k for k in range(10, 360) if int(_cut(ep, spec, _layout(100.0, 100.0), k)["state"][0, 0]) - 1000 != k - 10]
    assert late == []


def test_defect3_offset_zero_is_causal():
    """A state recorded 3 ms after the action's time is not the window's first row at offset 0."""
    a_ts = 2.0 + np.arange(10) / 100
    s_ts = a_ts + 0.003
    ep = EpisodeArrays(action_ts=a_ts, actions=counter(10, 1), signals={"state": (s_ts, counter(10, 1000))})
    spec = WindowSpec(acts_length_sec=0.05, obs_length_sec=0.02)
    for k in range(10):
        s = _cut(ep, spec, _layout(100.0, 100.0), k)
        if k == 0:
            assert s["state_mask"].tolist() == [False, True]  # nothing at or before 2.0: padding, then s_0
        else:
            assert s["state_mask"].all() and s["state"][:, 0].tolist() == [1000 + k - 1, 1000 + k]
            assert s_ts[k - 1] <= a_ts[k]
    # the earlier rule stays available, explicitly: the first sample at or after t
    s = _cut(ep, WindowSpec(0.05, 0.02, obs_align="at_or_after"), _layout(100.0, 100.0), 4)
    assert s["state"][:, 0].tolist() == [1004, 1005]


def test_defect4_resampling_keeps_the_last_sample():
    """Grid times equal to an episode's last sample are that sample, not masked (common rates and offsets)."""
    masked = hits = 0
    for r in (10, 20, 30, 50):
        n = 4 * r + 7
        ts = np.arange(n) / r
        ep = EpisodeArrays(action_ts=ts, actions=counter(n, 1), signals={"state": (ts, counter(n, 1000))})
        for off in (0.1, 0.3, -0.1, 0.2):
            spec = WindowSpec(0.1, 0.5, obs_offset_sec=off, obs_resample="linear", obs_rate_hz=r)
            rspec = spec.resolve(_layout(r, r))
            for k in range(n):
                s = cut_window(ep, k, rspec, 0, 0)
                for i in range(rspec.signals["state"].O):
                    if F(k, r) + dec(off) + F(i, r) == F(n - 1, r):
                        hits += 1
                        masked += not s["state_mask"][i]
                        assert not s["state_mask"][i] or s["state"][i, 0] == 1000 + n - 1
    assert hits > 50 and masked == 0, f"{masked} of {hits} grid times at the last sample were masked"


def test_defect5_nearest_ties_go_to_the_earlier_sample():
    ties = wrong = 0
    for r_s in (10, 20, 50):
        ts = np.arange(3 * r_s) / r_s
        ep = EpisodeArrays(action_ts=ts, actions=counter(len(ts), 1), signals={"state": (ts, counter(len(ts), 1000))})
        for off in (-0.1, 0.05, 0.025):
            spec = WindowSpec(0.1, 0.2, obs_offset_sec=off, obs_resample="nearest", obs_rate_hz=2 * r_s)
            for k in range(len(ts)):
                s = _cut(ep, spec, _layout(r_s, r_s), k)
                t = F(k, r_s) + dec(off)
                for i, (v, m) in enumerate(zip(s["state"][:, 0], s["state_mask"])):
                    ti = t + F(i, 2 * r_s)
                    x = ti * r_s
                    if m and x.denominator == 2:  # exactly between two samples
                        ties += 1
                        wrong += int(v) - 1000 != math.floor(x)
    assert ties > 100 and wrong == 0


def test_defect6_lengths_round_halves_up_exactly():
    assert WindowSpec(0.145, 0.145).resolve(_layout(100.0, 100.0)).A == 15
    bad = []
    for rate in (10, 15, 20, 25, 30, 50, 60, 100, 200, 30000 / 1001):
        r = F(rate).limit_denominator(1001)
        for ms in range(1, 1001):
            sec = ms / 1000
            want = oracle_length(sec, r)
            if want < 1:
                continue
            rs = WindowSpec(sec, sec).resolve(_layout(rate, rate))
            if (rs.A, rs.signals["state"].O) != (want, want):
                bad.append((rate, sec, rs.A, want))
    assert bad == []


@pytest.mark.parametrize("seed", range(10))
def test_defect7_jittered_rates_snap_to_nominal(seed):
    rng = np.random.default_rng(seed)
    eps = [k / 50 + rng.uniform(-0.0005, 0.0005, 300) for k in [np.arange(300)] * 3]
    rate = median_rate(eps)
    assert rate == 50.0
    assert WindowSpec(0.25, 0.25).resolve(_layout(rate, rate)).signals["state"].O == 13
    # a clean off-integer rate is kept; jitter too large for the spread is not snapped
    assert median_rate([np.arange(300) / 100.01]) == 100.01
    assert rate_from_diffs([np.full(100, 1 / 49.0)], "x") == 49.0


def test_defect8_one_frame_clip_is_not_shown_in_every_window():
    a_ts = np.arange(40) / 20  # 2 s of actions; the clip has one frame at 0.5 s and no camera rate
    frames = np.full((1, 3, 2, 2), 9, np.uint8)
    ep = EpisodeArrays(action_ts=a_ts, actions=counter(40, 1), signals={"state": (a_ts, counter(40, 1000))},
                       cameras={"cam": CameraClip(ts=np.array([0.5]), frames=frames)})
    layout = _layout(20.0, 20.0, cameras=(("cam", 2, 2, None),))
    spec = WindowSpec(0.1, 0.1)
    shown = [k for k in range(40) if _cut(ep, spec, layout, k)["cam_mask"][0]]
    assert shown == [10]  # only the window at 0.5 s (the action rate stands in for the missing camera rate)


@pytest.mark.parametrize("start", [1_742_918_912.0, 0.0])
def test_defect9_seed_import_aligns_clips_with_the_actions_clock(tmp_path, tokenizer_path, start):
    """Seed actions on an epoch clock: the clip (which starts at 0) is placed at the episode's start."""
    import warnings

    import pyarrow as pa
    import pyarrow.parquet as pq
    from test_build import _write_mp4v

    from wdspq.build.seed import build_from_seed
    from wdspq.table_dataset import ParquetWindowDataset

    n = 150
    ta = start + np.arange(n) / 100
    frames = np.zeros((30, 16, 16, 3), np.uint8)
    _write_mp4v(tmp_path / "v.mp4", frames, fps=20)
    acts = np.column_stack([ta, np.ones((n, 2))])
    obs = np.column_stack([ta, np.ones((n, 3))])
    pq.write_table(pa.table({"text": ["x"], "actions": [acts.tolist()], "observations": [obs.tolist()],
                             "video": ["v.mp4"]}), tmp_path / "seed.parquet")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        meta = build_from_seed(tmp_path / "seed.parquet", tmp_path / "t.parquet", progress=False)
    aligned = [w for w in caught if "clips_aligned_to_episode_start" in str(w.message)]
    assert len(aligned) == (1 if start else 0)
    assert meta.extra.get("clips_aligned_to_episode_start", 0) == (1 if start else 0)
    ds = ParquetWindowDataset(tmp_path / "t.parquet", WindowSpec(0.1, 0.1), tokenizer=tokenizer_path)
    with_frame = sum(bool(ds.sample_numpy(i)["frames_mask"][0]) for i in range(len(ds)))
    # frames at 0 .. 1.45 s (20 fps) cover anchors up to 1.47 s; at 1.48 s frame 30 (1.50 s) would be nearest
    assert with_frame == 148


def test_defect10_overrides_are_checked_per_stream_kind():
    layout = _layout(20.0, 20.0, cameras=(("cam", 2, 2, 10.0),))
    with pytest.raises(SpecError, match=r"overrides\['cam'\].*obs_length_sec.*camera"):
        WindowSpec(0.1, 0.1, overrides={"cam": {"obs_length_sec": 0.5}}).resolve(layout)
    with pytest.raises(SpecError, match=r"overrides\['state'\].*video_frame_offsets.*signal"):
        WindowSpec(0.1, 0.1, overrides={"state": {"video_frame_offsets": [-1, 0]}}).resolve(layout)
    spec = WindowSpec(0.1, 0.2, obs_resample="linear", obs_rate_hz=50, overrides={"state": {"obs_resample": "none"}})
    win = spec.resolve(layout).signals["state"]
    assert (win.mode, win.O, win.rate_hz) == ("none", 4, 20.0)


# --------------------------------------------------------------------------------------------------
# The oracle over every window
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data", sorted(DATA))
@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("obs_len", [0.05, 0.1, 0.15])
@pytest.mark.parametrize("align", ["at_or_before", "at_or_after"])
def test_oracle_raw_rows_every_window(data, offset, obs_len, align):
    make, r_a, r_s = DATA[data]
    ep, T = make()
    spec = WindowSpec(0.1, obs_len, obs_offset_sec=offset, **({"obs_align": align} if align != "at_or_before" else {}))
    rspec = spec.resolve(_layout(float(r_a), float(r_s)))
    O = oracle_length(obs_len, F(r_s))  # noqa: E741
    assert rspec.signals["state"].O == O
    vals = ep.signals["state"][1]
    for k in range(len(T["a"])):
        s = cut_window(ep, k, rspec, 0, 0)
        t = T["a"][k] + dec(offset)
        want, wmask, j0 = oracle_rows(T["s"], vals, t, F(r_s), O, align)
        np.testing.assert_array_equal(s["state_mask"], wmask, err_msg=f"{data} k={k} t={float(t)}")
        np.testing.assert_array_equal(s["state"], want, err_msg=f"{data} k={k}")
        if align == "at_or_before" and 0 <= j0 < len(T["s"]):
            assert T["s"][j0] <= t  # causal: never a sample from after the window's start


@pytest.mark.parametrize("data", sorted(DATA))
@pytest.mark.parametrize("offset", [-0.1, -0.03, 0.0, 0.05])
@pytest.mark.parametrize("mode", ["linear", "nearest"])
@pytest.mark.parametrize("rate_out", [10, 25, 40])
def test_oracle_resampled_every_window(data, offset, mode, rate_out):
    make, r_a, r_s = DATA[data]
    ep, T = make()
    spec = WindowSpec(0.1, 0.2, obs_offset_sec=offset, obs_resample=mode, obs_rate_hz=rate_out)
    rspec = spec.resolve(_layout(float(r_a), float(r_s)))
    O = oracle_length(0.2, F(rate_out))  # noqa: E741
    vals = ep.signals["state"][1]
    for k in range(len(T["a"])):
        s = cut_window(ep, k, rspec, 0, 0)
        want, wmask = oracle_resampled(T["s"], vals, T["a"][k] + dec(offset), F(rate_out), O, mode)
        np.testing.assert_array_equal(s["state_mask"], wmask, err_msg=f"{data} k={k}")
        if mode == "nearest":
            np.testing.assert_array_equal(s["state"], want.astype(np.float32), err_msg=f"{data} k={k}")
        else:
            np.testing.assert_allclose(s["state"], want, rtol=2e-6, atol=1e-4, err_msg=f"{data} k={k}")


def _clip_case(seed: int):
    """A 15 fps camera with jitter (100 us steps) and dropped frames, starting 0.2 s after the actions."""
    rng = np.random.default_rng(seed)
    keep = np.flatnonzero(rng.random(20) > 0.1)
    us = 3_200_000 + (np.arange(20) * 10**6) // 15 + 100 * rng.integers(-20, 21, 20)
    us = us[keep]
    return [F(int(u), 10**6) for u in us], us / 1e6


@pytest.mark.parametrize("data", sorted(DATA))
@pytest.mark.parametrize("seed", range(3))
def test_oracle_camera_frames_every_window(data, seed):
    make, r_a, r_s = DATA[data]
    ep, T = make()
    C, c_ts = _clip_case(seed)
    shift = T["a"][0] - F(3)  # put the clip on this data's clock, starting after the first anchor
    C = [c + shift for c in C]
    c_ts = np.array([float(c) for c in C])
    frames = (np.arange(len(C)) + 1).astype(np.uint8)[:, None, None, None] * np.ones((1, 3, 2, 2), np.uint8)
    one = CameraClip(ts=c_ts[:1].copy(), frames=frames[:1].copy())
    ep.cameras = {"cam": CameraClip(ts=c_ts, frames=frames), "one": one}
    offsets = [-2, -1, 0, 1]
    layout = _layout(float(r_a), float(r_s), cameras=(("cam", 2, 2, 15.0), ("one", 2, 2, None)))
    rspec = WindowSpec(0.1, 0.1, video_frame_offsets=offsets).resolve(layout)
    seen_before = seen_after = 0
    for k in range(len(T["a"])):
        s = cut_window(ep, k, rspec, 0, 0)
        t0 = T["a"][k]
        base = oracle_base_frame(C, t0, F(15))
        idx = [base + o for o in offsets]
        want_mask = [0 <= i < len(C) for i in idx]
        assert s["cam_mask"].tolist() == want_mask, (data, k, float(t0))
        for slot, i in enumerate(idx):
            assert int(s["cam"][slot, 0, 0, 0]) == (i + 1 if want_mask[slot] else 0)
        seen_before += t0 < C[0] and any(want_mask)
        seen_after += t0 > C[-1] and any(want_mask)
        one_base = oracle_base_frame(C[:1], t0, F(r_a))  # no camera rate: the action rate stands in
        assert s["one_mask"].tolist() == [one_base + o == 0 for o in offsets]
    assert seen_before and seen_after  # frames just outside the clip are still used near its ends


# --------------------------------------------------------------------------------------------------
# Exports made under the earlier rules
# --------------------------------------------------------------------------------------------------
def test_old_rules_export_warns_once_and_verify_reports_it(small_table, tokenizer_path, tmp_path, monkeypatch):
    """An export cut by the earlier rule (first sample at or after t, no padding) and recorded without a
    window rules version: streaming it warns once naming it; `verify --table` reports its windows."""
    import json
    import warnings

    import wdspq
    import wdspq.windows as w
    from wdspq.shardfmt.manifest import OldWindowRulesWarning
    from wdspq.verify import verify_shards

    spec = WindowSpec(0.2, 0.1, obs_offset_sec=-0.05)
    old = tmp_path / "old"
    with monkeypatch.context() as mp:
        mp.setattr(w, "first_row", lambda ts, t, rate, align="at_or_before": int(np.searchsorted(ts, t, side="left")))
        wdspq.export_shards(small_table, old, spec, tokenizer=tokenizer_path, workers=1, progress=False)
    manifest = json.loads((old / "manifest.json").read_text())
    assert manifest["window_rules_version"] == w.WINDOW_RULES_VERSION
    del manifest["window_rules_version"]  # as written before the field existed
    (old / "manifest.json").write_text(json.dumps(manifest))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wdspq.ShardStream(old, shuffle=False)
        wdspq.ShardStream(old, shuffle=False)
    found = [c for c in caught if issubclass(c.category, OldWindowRulesWarning)]
    assert len(found) == 1 and str(old) in str(found[0].message) and "version 1" in str(found[0].message)
    report = verify_shards(str(old), table=small_table, tokenizer=tokenizer_path)
    assert not report.ok and any(p.key == "observations" for p in report.problems)
    new = tmp_path / "new"
    wdspq.export_shards(small_table, new, spec, tokenizer=tokenizer_path, workers=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OldWindowRulesWarning)
        wdspq.ShardStream(new, shuffle=False)
    assert verify_shards(str(new), table=small_table, tokenizer=tokenizer_path).ok


def test_oracle_lerobot_import_every_window(tmp_path, tokenizer_path):
    """A LeRobot v2.1 dataset imported with `build lerobot` (float32 timestamps i / fps): every window of
    every episode against the oracle computed from the table's raw arrays (intended time round(ts * fps) / fps)."""
    import pyarrow.parquet as pq
    from lerobot_fixture import CAMERAS, FPS, write_v21

    from wdspq.build import build_from_lerobot
    from wdspq.table_dataset import ParquetWindowDataset

    root = write_v21(tmp_path / "ds", {CAMERAS[0]: "libx264", CAMERAS[1]: "libx264"})
    build_from_lerobot(root, tmp_path / "t.parquet", progress=False)
    table = pq.read_table(tmp_path / "t.parquet")
    raw = [(np.array(table.column("action_ts")[e].as_py()),
            [F(round(x * FPS), FPS) for x in table.column("observation.state_ts")[e].as_py()],
            np.array(table.column("observation.state")[e].as_py(), np.float32)) for e in range(table.num_rows)]
    for offset in (-0.2, -0.1, -0.05, 0.0, 0.1, 0.15):
        ds = ParquetWindowDataset(tmp_path / "t.parquet", WindowSpec(0.2, 0.3, obs_offset_sec=offset),
                                  tokenizer=tokenizer_path)
        O = oracle_length(0.3, F(FPS))  # noqa: E741
        for i in range(len(ds)):
            s = ds.sample_numpy(i)
            e, k = int(s["episode_index"]), int(s["anchor_index"])
            a_ts, T, vals = raw[e]
            t = F(round(a_ts[k] * FPS), FPS) + dec(offset)
            want, wmask, _ = oracle_rows(T, vals, t, F(FPS), O)
            np.testing.assert_array_equal(s["observation.state_mask"], wmask, err_msg=f"offset {offset} window {i}")
            np.testing.assert_array_equal(s["observation.state"], want, err_msg=f"offset {offset} window {i}")


def test_cli_spec_flag_obs_align():
    import argparse

    from wdspq.cli.spec_args import add_spec_args, spec_from_args

    p = argparse.ArgumentParser()
    add_spec_args(p)
    assert spec_from_args(p.parse_args([])).obs_align == "at_or_before"
    spec = spec_from_args(p.parse_args(["--obs-align", "at_or_after", "--obs-offset-sec", "-0.1"]))
    assert spec.obs_align == "at_or_after" and spec.to_dict()["obs_align"] == "at_or_after"
    assert WindowSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(SpecError, match="obs_align"):
        WindowSpec(0.1, 0.1, obs_align="nearest")


def test_obs_align_with_resampling_is_refused():
    """obs_align applies to raw rows; accepting it with resampling would change the digest and nothing else."""
    with pytest.raises(SpecError, match="raw rows only"):
        WindowSpec(acts_length_sec=0.1, obs_length_sec=0.1, obs_resample="linear", obs_align="at_or_after")
    with pytest.raises(SpecError, match="raw rows only"):
        WindowSpec(acts_length_sec=0.1, obs_length_sec=0.1, obs_align="at_or_after",
                   overrides={"s": {"obs_resample": "linear"}})


def test_constant_fps_frames_follow_the_exact_half_rule():
    """Version 1 clips: base = floor((t0 - video_t0) * fps + 1/2) exactly; no anchor short of the halfway
    point between two frames is moved to the farther frame (only float noise counts as a tie)."""
    fps = 30
    clip = CameraClip(ts=np.arange(40, dtype=np.float64) / fps, frames=np.zeros((40, 3, 1, 1), np.uint8), fps=fps)
    from wdspq.windows import camera_indices

    for us in range(0, 1_000_000, 37):  # anchors every 37 µs over one second
        t0 = us / 1_000_000
        expected = math.floor(Fraction(us, 1_000_000) * fps + Fraction(1, 2))
        assert camera_indices(clip, t0, np.array([0]), float(fps))[0] == expected, t0
    # per-frame times (version 2 clips): nearest frame, an anchor 1e-4 of a period short of the half
    ts = np.arange(40, dtype=np.float64) / fps
    clip2 = CameraClip(ts=ts, frames=clip.frames)
    t_half = (0.5 - 1e-4) / fps
    assert camera_indices(clip2, t_half, np.array([0]), float(fps))[0] == 0
