"""The window function against docs/table.md "Window rules": hand-computed cases, properties, seed defects."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from window_oracle import dec, oracle_base_frame, oracle_length, oracle_resampled, oracle_rows

from wdspq.errors import SpecError, WdspqError
from wdspq.table.rates import median_rate
from wdspq.windows import (
    CameraClip,
    EpisodeArrays,
    ResolvedSpec,
    SampleLayout,
    SignalWindow,
    WindowIndex,
    WindowSpec,
    anchors,
    cut_window,
    num_anchors,
    observation_rows,
    sample_schema,
)

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

# --------------------------------------------------------------------------------------------------
# The hand-computed 3-episode table. All timestamps are dyadic, so every comparison is exact.
#   actions at 8 Hz, observations at 4 Hz (shifted against the actions), video at 4 fps.
#   action value of episode e, row k: [100*(e+1) + k, -(100*(e+1) + k)]
#   observation value of episode e, row j: [1000*(e+1) + j, -(1000*(e+1) + j)]
#   synthetic frame f of a clip: every pixel equals f + 1 (so a zero frame is "no frame")
# --------------------------------------------------------------------------------------------------
R_A, R_O, FPS = 8.0, 4.0, 4.0
HW = (32, 32)
IMG_HW = (8, 8)
TEXTS = ("pick up the red cube", "open the top cabinet door", "pour water into the cup")
PICK_IDS = [101, 4060, 2039, 1996, 2417, 14291, 102]

EP_LAYOUT = [
    # (action_ts, observation_ts, video_t0, n_frames or 0, has_image)
    (10.0 + np.arange(6) / 8, 10.0625 + np.arange(4) / 4, 9.5, 6, True),
    (20.0 + np.arange(3) / 8, 19.5 + np.arange(6) / 4, 0.0, 0, False),
    (30.0 + np.arange(8) / 8, 30.125 + np.arange(3) / 4, 30.25, 2, False),
]

SPEC = WindowSpec(acts_length_sec=0.5, obs_length_sec=0.75, obs_offset_sec=-0.25, video_frame_offsets=[-2, 0, 1])


def act(e: int, k: int) -> list[float]:
    return [100 * (e + 1) + k, -(100 * (e + 1) + k)]


def obs(e: int, j: int) -> list[float]:
    return [1000 * (e + 1) + j, -(1000 * (e + 1) + j)]


def hand_episodes() -> list[EpisodeArrays]:
    out = []
    for e, (ats, ots, vt0, nf, has_img) in enumerate(EP_LAYOUT):
        frames = None
        if nf:
            frames = np.broadcast_to((np.arange(nf) + 1).astype(np.uint8)[:, None, None, None], (nf, 3, *HW)).copy()
        out.append(
            EpisodeArrays(
                action_ts=ats.astype(np.float64),
                actions=np.array([act(e, k) for k in range(len(ats))], dtype=np.float32),
                signals={"observations": (ots.astype(np.float64),
                                          np.array([obs(e, j) for j in range(len(ots))], dtype=np.float32))},
                cameras={"frames": CameraClip(ts=vt0 + np.arange(nf) / FPS, frames=frames) if nf else None},
                images={"image": np.full((3, *IMG_HW), 7 + e, dtype=np.uint8) if has_img else None},
                tokens={"input_ids": np.full(32, e, dtype=np.int64)},
            )
        )
    return out


LAYOUT = SampleLayout(action_dim=2, action_rate_hz=R_A, signals=(("observations", 2, R_O),),
                      cameras=(("frames", *HW, FPS),), images=(("image", *IMG_HW),))


def _layout(r_a: float, r_o: float) -> SampleLayout:
    return SampleLayout(action_dim=1, action_rate_hz=r_a, signals=(("observations", 1, r_o),))


def obs_ts(ep: EpisodeArrays) -> np.ndarray:
    return ep.signals["observations"][0]


def obs_vals(ep: EpisodeArrays) -> np.ndarray:
    return ep.signals["observations"][1]
Z = [0.0, 0.0]  # a masked (zero) row

# Expected windows of SPEC (A = 4 actions, O = 3 observations, frame offsets [-2, 0, 1]), written out by hand.
# frames: the clip frame index per offset, or None where the frame falls outside the clip (zeros, mask False).
EXPECTED = {
    # episode 0, first anchor: t0 = 10.0; obs start 9.75 is 0.3125 s (1.25 periods) before the first
    # observation -> j0 = -ceil(1.25) = -2: two rows of padding, then row 0 (the window is not shifted);
    # frame base floor((10.0 - 9.5) * 4 + 0.5) = floor(2.5) = 2 -> frames 0, 2, 3
    0: dict(ep=0, k=0, t0=10.0, actions=[act(0, 0), act(0, 1), act(0, 2), act(0, 3)], amask=[1, 1, 1, 1],
            obs=[Z, Z, obs(0, 0)], omask=[0, 0, 1], frames=[0, 2, 3]),
    # t0 = 10.125: obs start 9.875 is 0.75 periods before row 0 -> j0 = -1;
    # base = floor(0.625 * 4 + 0.5) = floor(3.0) = 3 (half rounds up) -> frames 1, 3, 4
    1: dict(ep=0, k=1, t0=10.125, actions=[act(0, 1), act(0, 2), act(0, 3), act(0, 4)], amask=[1, 1, 1, 1],
            obs=[Z, obs(0, 0), obs(0, 1)], omask=[0, 1, 1], frames=[1, 3, 4]),
    # episode 0, last anchor k = 5: t0 = 10.625; 3 actions past the end; obs start 10.375 -> the latest
    # observation at or before it is row 1 (10.3125) -> rows 1, 2, 3;
    # frame base floor(1.125 * 4 + 0.5) = 5 -> frames 3, 5 and 6 (after the clip)
    5: dict(ep=0, k=5, t0=10.625, actions=[act(0, 5), Z, Z, Z], amask=[1, 0, 0, 0],
            obs=[obs(0, 1), obs(0, 2), obs(0, 3)], omask=[1, 1, 1], frames=[3, 5, None]),
    # episode 1 (no video), first anchor: t0 = 20.0; obs start 19.75 equals observation_ts[1] -> j0 = 1
    # (by row index it would be row 0: the seed's bug); 3 actions only
    6: dict(ep=1, k=0, t0=20.0, actions=[act(1, 0), act(1, 1), act(1, 2), Z], amask=[1, 1, 1, 0],
            obs=[obs(1, 1), obs(1, 2), obs(1, 3)], omask=[1, 1, 1], frames=[None, None, None]),
    # episode 1, last anchor: t0 = 20.25, obs start 20.0 -> j0 = 2
    8: dict(ep=1, k=2, t0=20.25, actions=[act(1, 2), Z, Z, Z], amask=[1, 0, 0, 0],
            obs=[obs(1, 2), obs(1, 3), obs(1, 4)], omask=[1, 1, 1], frames=[None, None, None]),
    # episode 2, first anchor: t0 = 30.0; obs start 29.75 is 1.5 periods before row 0 -> j0 = -2;
    # base floor((30.0 - 30.25) * 4 + 0.5) = floor(-0.5) = -1 -> frames -3, -1 (before the clip) and 0
    9: dict(ep=2, k=0, t0=30.0, actions=[act(2, 0), act(2, 1), act(2, 2), act(2, 3)], amask=[1, 1, 1, 1],
            obs=[Z, Z, obs(2, 0)], omask=[0, 0, 1], frames=[None, None, 0]),
    # t0 = 30.375: obs start 30.125 equals observation_ts[0] -> j0 = 0 (row index 3 would be past the end);
    # base floor(0.125 * 4 + 0.5) = 1 -> frames -1 (before), 1, 2 (after: the clip has 2 frames)
    12: dict(ep=2, k=3, t0=30.375, actions=[act(2, 3), act(2, 4), act(2, 5), act(2, 6)], amask=[1, 1, 1, 1],
             obs=[obs(2, 0), obs(2, 1), obs(2, 2)], omask=[1, 1, 1], frames=[None, 1, None]),
    # episode 2, last anchor k = 7: t0 = 30.875; obs start 30.625 -> j0 = 2; base floor(0.625 * 4 + 0.5) = 3
    16: dict(ep=2, k=7, t0=30.875, actions=[act(2, 7), Z, Z, Z], amask=[1, 0, 0, 0],
             obs=[obs(2, 2), Z, Z], omask=[1, 0, 0], frames=[1, None, None]),
}


def _resolved(spec: WindowSpec = SPEC) -> ResolvedSpec:
    return spec.resolve(LAYOUT)


def _hand_sample(i: int, spec: WindowSpec = SPEC) -> dict[str, np.ndarray]:
    rspec = _resolved(spec)
    eps = hand_episodes()
    index = WindowIndex([len(e.action_ts) for e in eps], rspec)
    ep, _, k = index.locate(i)
    return cut_window(eps[int(ep)], int(k), rspec, i, int(ep))


def check_expected(s: dict, i: int, exp: dict, frame_value) -> None:
    """Compare one sample with its written-out expectation; `frame_value(frame) -> clip index` reads frames."""
    assert int(s["window_index"]) == i
    assert int(s["episode_index"]) == exp["ep"]
    assert int(s["anchor_index"]) == exp["k"]
    assert float(s["t0"]) == exp["t0"]
    np.testing.assert_array_equal(np.asarray(s["actions"]), np.array(exp["actions"], dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(s["actions_mask"]), np.array(exp["amask"], dtype=bool))
    np.testing.assert_array_equal(np.asarray(s["observations"]), np.array(exp["obs"], dtype=np.float32))
    np.testing.assert_array_equal(np.asarray(s["observations_mask"]), np.array(exp["omask"], dtype=bool))
    frames, fmask = np.asarray(s["frames"]), np.asarray(s["frames_mask"])
    assert frames.shape == (3, 3, *HW) and frames.dtype == np.uint8
    np.testing.assert_array_equal(fmask, np.array([f is not None for f in exp["frames"]]))
    for slot, f in enumerate(exp["frames"]):
        if f is None:
            assert not frames[slot].any(), f"window {i}: slot {slot} should be a zero frame"
        else:
            assert frame_value(frames[slot]) == f, f"window {i}: slot {slot} should be clip frame {f}"


def test_hand_resolve_and_index():
    rspec = _resolved()
    assert (rspec.A, rspec.signals["observations"].O) == (4, 3)
    eps = hand_episodes()
    index = WindowIndex([len(e.action_ts) for e in eps], rspec)
    assert len(index) == 6 + 3 + 8
    assert index.starts.tolist() == [0, 6, 9, 17]


@pytest.mark.parametrize("i", sorted(EXPECTED))
def test_hand_computed_windows(i):
    check_expected(_hand_sample(i), i, EXPECTED[i], frame_value=lambda fr: int(fr[0, 0, 0]) - 1)


def test_hand_image_and_tokens():
    s0, s6 = _hand_sample(0), _hand_sample(6)
    assert s0["image"].dtype == np.uint8 and s0["image"].shape == (3, *IMG_HW)
    assert bool(s0["image_mask"]) and (s0["image"] == 7).all()
    assert not bool(s6["image_mask"]) and not s6["image"].any()
    assert s6["input_ids"].tolist() == [1] * 32


def test_hand_stride_full_windows_only():
    spec = WindowSpec(0.5, 0.75, obs_offset_sec=-0.25, video_frame_offsets=[-2, 0, 1], stride=2, full_windows_only=True)
    rspec = _resolved(spec)
    eps = hand_episodes()
    index = WindowIndex([len(e.action_ts) for e in eps], rspec)
    # episode 0: k + 4 <= 6 -> k in {0, 2}; episode 1 (3 actions) has none; episode 2: k in {0, 2, 4}
    pairs = [tuple(int(x) for x in (index.locate(i)[0], index.locate(i)[2])) for i in range(len(index))]
    assert pairs == [(0, 0), (0, 2), (2, 0), (2, 2), (2, 4)]
    s = _hand_sample(3, spec)
    assert int(s["episode_index"]) == 2 and int(s["anchor_index"]) == 2 and bool(s["actions_mask"].all())
    np.testing.assert_array_equal(s["actions"], np.array([act(2, k) for k in range(2, 6)], dtype=np.float32))


def test_hand_linear_and_nearest_resampling():
    eps = hand_episodes()
    # 8 Hz from t0 + 0 = 10.0 over episode 0's observations (10.0625, 10.3125, 10.5625, 10.8125)
    lin = WindowSpec(0.5, 0.5, obs_resample="linear", obs_rate_hz=8).resolve(LAYOUT).signals["observations"]
    assert lin.O == 4
    vals, mask = observation_rows(obs_ts(eps[0]), obs_vals(eps[0]), 10.0, lin)
    np.testing.assert_array_equal(mask, [False, True, True, True])  # 10.0 is before the first observation
    np.testing.assert_array_equal(vals[:, 0], np.float32([0.0, 1000.25, 1000.75, 1001.25]))
    np.testing.assert_array_equal(vals[:, 1], np.float32([0.0, -1000.25, -1000.75, -1001.25]))
    # At source timestamps the value is the source value; past the last one it is masked.
    vals, mask = observation_rows(obs_ts(eps[0]), obs_vals(eps[0]), 10.5625, lin)
    np.testing.assert_array_equal(mask, [True, True, True, False])
    np.testing.assert_array_equal(vals[:, 0], np.float32([1002.0, 1002.5, 1003.0, 0.0]))
    # Nearest, ties to the earlier sample: 10.1875 (tie -> row 0), 10.3125 (row 1), 10.4375 (tie -> row 1), 10.5625
    near = WindowSpec(0.5, 0.5, obs_resample="nearest", obs_rate_hz=8).resolve(LAYOUT).signals["observations"]
    vals, mask = observation_rows(obs_ts(eps[0]), obs_vals(eps[0]), 10.1875, near)
    assert mask.all()
    np.testing.assert_array_equal(vals[:, 0], np.float32([1000, 1001, 1001, 1002]))
    # Default obs rate when resampling is the action rate (8 Hz here).
    assert WindowSpec(0.5, 0.5, obs_resample="nearest").resolve(LAYOUT).signals["observations"].O == 4


def build_hand_table(path, with_video: bool = True) -> None:
    """The same 3 episodes as a real Parquet table (video: counter-coded frames, encoded losslessly enough)."""
    from wdspq.build.synthetic import render_frames
    from wdspq.media import encode_clip, encode_png
    from wdspq.table import Episode, TableWriter, actions_stream, camera_stream, image_stream, signal_stream

    eps = hand_episodes()
    streams = [actions_stream(2), signal_stream("observations", 2), camera_stream("frames", *HW), image_stream("image", *IMG_HW)]
    with TableWriter(path, streams, row_group_size=2) as w:
        for e, (ea, (_, _, vt0, nf, has_img)) in enumerate(zip(eps, EP_LAYOUT)):
            video, ts = None, np.zeros(0)
            if nf and with_video:
                video = encode_clip(render_frames(nf, *HW, np.random.default_rng(e)), fps=int(FPS))
                ts = vt0 + np.arange(nf) / FPS
            image = encode_png(np.full((*IMG_HW, 3), 7 + e, dtype=np.uint8)) if has_img else None
            w.add(Episode(f"ep{e}", TEXTS[e], ea.action_ts, ea.actions, signals=dict(ea.signals),
                          cameras={"frames": (video, ts)}, images={"image": image}))
        w.close()


@pytest.fixture(scope="module")
def hand_table(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("hand") / "hand.parquet"
    build_hand_table(path)
    return str(path)


def test_hand_table_through_parquet_dataset(hand_table, tokenizer_path):
    from wdspq.build.synthetic import read_frame_counter
    from wdspq.table_dataset import ParquetWindowDataset

    ds = ParquetWindowDataset(hand_table, SPEC, tokenizer=tokenizer_path)
    assert (ds.meta.actions.rate_hz, ds.meta.stream("observations").rate_hz) == (R_A, R_O)
    assert len(ds) == 17  # windows, not the 3 episodes (seed defect)
    for i, exp in EXPECTED.items():
        s = ds[i]
        assert isinstance(s["actions"], torch.Tensor)
        check_expected({k: v.numpy() for k, v in s.items()}, i, exp, frame_value=read_frame_counter)
    assert ds[0]["input_ids"][:7].tolist() == PICK_IDS and int(ds[0]["input_ids"][7]) == 0
    assert bool(ds[0]["image_mask"]) and (ds[0]["image"] == 7).all()
    assert not bool(ds[6]["image_mask"]) and not ds[6]["image"].any()
    # every window of the Parquet path equals the pure function on the hand-built arrays (frames aside)
    for i in range(len(ds)):
        got, ref = ds.sample_numpy(i), _hand_sample(i)
        for key in ("actions", "actions_mask", "observations", "observations_mask", "frames_mask", "t0",
                    "window_index", "episode_index", "anchor_index"):
            np.testing.assert_array_equal(got[key], ref[key], err_msg=f"window {i}, {key}")


# --------------------------------------------------------------------------------------------------
# Seed defects, pinned
# --------------------------------------------------------------------------------------------------
def test_seed_defect_rounding_not_truncation():
    action_ts = np.arange(50) / 100  # the median step is a hair above 0.01 s
    rate = 1.0 / float(np.median(np.diff(action_ts)))  # unsnapped, as the seed measured it
    assert int(0.1 * rate) == 9  # what the seed computed
    assert median_rate([action_ts]) == 100.0  # the table stores the snapped rate
    layout = SampleLayout(action_dim=1, action_rate_hz=rate, signals=(("observations", 1, rate),))
    assert WindowSpec(acts_length_sec=0.1, obs_length_sec=0.1).resolve(layout).A == 10
    assert WindowSpec(acts_length_sec=0.1, obs_length_sec=0.1).resolve(layout).signals["observations"].O == 10


def test_rates_snap_to_exact_values():
    from wdspq.table.rates import snap_rate

    assert snap_rate(100.0000954) == 100.0 and snap_rate(29.97002997) == 30000 / 1001
    assert snap_rate(100.01) == 100.01  # a real offset is kept
    epoch = 1_742_918_912.0 + np.arange(2000) / 250  # 4 ms steps at epoch times: float64 spacing 2.4e-7 s
    assert median_rate([epoch]) == 250.0
    # 0.125 s at an exact 100 Hz is 12.5 -> 13 rows on every table, not table-dependent float noise
    r100 = median_rate([1_742_918_912.0 + np.arange(2000) / 100])
    assert r100 == 100.0
    assert WindowSpec(acts_length_sec=0.125, obs_length_sec=0.1).resolve(_layout(r100, 50.0)).A == 13


def test_seed_defect_observations_by_time_not_row():
    # Observations start 0.5 s before the actions, at half their rate: row index k would be wrong.
    s = _hand_sample(6)
    assert s["observations"][0].tolist() == obs(1, 1)  # observation_ts[1] == t0 - 0.25, not row 0
    s = _hand_sample(8)  # anchor row 2 of episode 1; by row index the obs would start at row 2 - by time too,
    assert s["observations"][0].tolist() == obs(1, 2)  # since t0 - 0.25 = 20.0 = observation_ts[2]
    s = _hand_sample(12)  # anchor row 3 of episode 2 -> time 30.125 -> observation row 0, not 3
    assert s["observations"][0].tolist() == obs(2, 0) and bool(s["observations_mask"].all())


def test_seed_defect_frames_fixed_size_uint8_batchable():
    samples = [_hand_sample(i) for i in (0, 5, 6, 9, 12, 16)]
    for s in samples:
        assert s["frames"].dtype == np.uint8 and s["frames"].shape == (3, 3, *HW)
        assert s["frames_mask"].shape == (3,)
    batch = torch.utils.data.default_collate([{k: torch.from_numpy(v) for k, v in s.items()} for s in samples])
    assert batch["frames"].shape == (6, 3, 3, *HW) and batch["frames"].dtype == torch.uint8
    assert batch["frames_mask"].tolist()[1] == [True, True, False]


def test_sample_schema_matches():
    rspec = _resolved()
    schema = sample_schema(rspec, ["input_ids"])
    s = _hand_sample(0)
    assert set(s) == set(schema)
    for k, v in s.items():
        assert str(v.dtype) == schema[k]["dtype"] and list(v.shape) == schema[k]["shape"], k


# --------------------------------------------------------------------------------------------------
# Spec validation
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(acts_length_sec=0, obs_length_sec=1), "acts_length_sec"),
        (dict(acts_length_sec=-1, obs_length_sec=1), "acts_length_sec"),
        (dict(acts_length_sec=1, obs_length_sec=float("nan")), "obs_length_sec"),
        (dict(acts_length_sec=1, obs_length_sec=1, obs_resample="cubic"), "obs_resample"),
        (dict(acts_length_sec=1, obs_length_sec=1, video_frame_offsets=[]), "video_frame_offsets"),
        (dict(acts_length_sec=1, obs_length_sec=1, video_frame_offsets=[0.5]), "video_frame_offsets"),
        (dict(acts_length_sec=1, obs_length_sec=1, stride=0), "stride"),
        (dict(acts_length_sec=1, obs_length_sec=1, stride=-2), "stride"),
        (dict(acts_length_sec=1, obs_length_sec=1, stride=1.5), "stride"),
        (dict(acts_length_sec=1, obs_length_sec=1, stride=True), "stride"),
        (dict(acts_length_sec=1, obs_length_sec=1, obs_rate_hz=0), "obs_rate_hz"),
        (dict(acts_length_sec=1, obs_length_sec=1, max_text_tokens=0), "max_text_tokens"),
        (dict(acts_length_sec=1, obs_length_sec=1, obs_offset_sec=float("inf")), "obs_offset_sec"),
    ],
)
def test_spec_validation(kwargs, words):
    with pytest.raises(SpecError, match=words):
        WindowSpec(**kwargs)


def test_spec_lengths_rounding_to_zero_fail_at_resolve():
    with pytest.raises(SpecError, match=r"acts_length_sec=0\.004 .* 100 Hz gives 0 action rows"):
        WindowSpec(acts_length_sec=0.004, obs_length_sec=1.0).resolve(_layout(100.0, 50.0))
    with pytest.raises(SpecError, match=r"obs_length_sec=0\.009 at 50 Hz gives 0 observation rows"):
        WindowSpec(acts_length_sec=1.0, obs_length_sec=0.009).resolve(_layout(100.0, 50.0))
    with pytest.raises(SpecError, match=r"at 10 Hz gives 0"):
        WindowSpec(1.0, 0.04, obs_resample="linear", obs_rate_hz=10).resolve(_layout(100.0, 50.0))
    assert WindowSpec(acts_length_sec=0.006, obs_length_sec=1.0).resolve(_layout(100.0, 50.0)).A == 1  # 0.6 rounds up to 1
    assert issubclass(SpecError, WdspqError)


def test_spec_lengths_round_halves_up_and_rate_needs_resampling():
    # 0.25 s at 10 Hz is 2.5 rows: halves round up (as frame indices do), not to even.
    assert WindowSpec(acts_length_sec=0.25, obs_length_sec=0.25).resolve(_layout(10.0, 10.0)).A == 3
    assert WindowSpec(acts_length_sec=0.35, obs_length_sec=0.45).resolve(_layout(10.0, 10.0)).signals["observations"].O == 5
    with pytest.raises(SpecError, match="only used when resampling"):
        WindowSpec(acts_length_sec=1.0, obs_length_sec=1.0, obs_rate_hz=20.0)


def test_spec_round_trip_and_unknown_field():
    spec = WindowSpec(1.0, 0.5, obs_offset_sec=-0.5, video_frame_offsets=[-2, -1, 0], stride=3, obs_resample="linear")
    assert WindowSpec.from_dict(spec.to_dict()) == spec
    assert spec.digest() == WindowSpec.from_dict(spec.to_dict()).digest()
    with pytest.raises(SpecError, match="unknown window spec fields"):
        WindowSpec.from_dict({**spec.to_dict(), "sample_rate": 3})


def test_cut_window_rejects_anchor_outside_episode():
    ep = hand_episodes()[1]
    with pytest.raises(SpecError, match="outside the episode"):
        cut_window(ep, 3, _resolved(), 0, 1)


# --------------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------------
PERIODS_MS = (10, 20, 40, 50, 100)  # 100, 50, 25, 20, 10 Hz


@st.composite
def ticks(draw, max_n: int = 40) -> tuple[list[int], int]:
    """(times in integer ms, rate Hz): a start up to epoch size, jitter up to a quarter period, drops.

    Times are whole milliseconds and tolerances are at most 1e-3 of a period, so no sample lies within
    float noise of a window edge without being exactly on it: the exact oracle and wdspq must agree.
    """
    period = draw(st.sampled_from(PERIODS_MS))
    n = draw(st.integers(2, max_n))
    start = draw(st.sampled_from([0, 3_700, 1_742_918_912_250])) + draw(st.integers(0, 10_000))
    jitter = draw(st.lists(st.integers(-(period // 4), period // 4), min_size=n, max_size=n))
    keep = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    ms = [start + k * period + j for k, (j, kept) in enumerate(zip(jitter, keep)) if kept or k == 0]
    return ms, 1000 // period


def _secs(ms: list[int]) -> tuple[list[Fraction], np.ndarray]:
    return [Fraction(m, 1000) for m in ms], np.array(ms, dtype=np.float64) / 1000


@st.composite
def episodes(draw) -> tuple[EpisodeArrays, dict]:
    (a_ms, r_a), (o_ms, r_o) = draw(ticks()), draw(ticks())
    a_T, ats = _secs(a_ms)
    o_T, ots = _secs(o_ms)
    D, S = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    n_f = draw(st.integers(0, 12))
    fps = draw(st.sampled_from([5, 10, 20, 25]))
    v1 = draw(st.booleans())  # a version 1 constant-rate clip, or per-frame times with jitter and drops
    vt0_ms = a_ms[0] + draw(st.integers(-500, 500))
    f_ms = [vt0_ms + (1000 * j) // fps + (0 if v1 else draw(st.integers(-(250 // fps), 250 // fps))) for j in range(n_f)]
    frames = None
    if n_f:
        frames = np.broadcast_to((np.arange(n_f) % 250 + 1).astype(np.uint8)[:, None, None, None], (n_f, 3, 2, 3)).copy()
    clip = None
    if n_f:
        ts = vt0_ms / 1000 + np.arange(n_f) / fps if v1 else np.array(f_ms, dtype=np.float64) / 1000
        clip = CameraClip(ts=ts, frames=frames, fps=float(fps) if v1 else None)
    ep = EpisodeArrays(
        action_ts=ats,
        actions=rng.normal(size=(len(ats), D)).astype(np.float32),
        signals={"observations": (ots, rng.normal(size=(len(ots), S)).astype(np.float32))},
        cameras={"frames": clip},
    )
    F_T = [Fraction(vt0_ms, 1000) + Fraction(j, fps) for j in range(n_f)] if v1 else [Fraction(m, 1000) for m in f_ms]
    return ep, {"D": D, "S": S, "fps": fps, "v1": v1, "a": a_T, "o": o_T, "f": F_T, "r_a": r_a, "r_o": r_o}


@st.composite
def specs(draw) -> WindowSpec:
    """Specs that always resolve (lengths of at least one period at 10 Hz): no example is skipped."""
    mode = draw(st.sampled_from(["none", "linear", "nearest"]))
    return WindowSpec(
        acts_length_sec=draw(st.integers(50, 300)) / 1000,
        obs_length_sec=draw(st.integers(50, 500)) / 1000,
        obs_offset_sec=draw(st.integers(-500, 500)) / 1000,
        video_frame_offsets=draw(st.lists(st.integers(-5, 5), min_size=1, max_size=4)),
        stride=draw(st.integers(1, 4)),
        full_windows_only=draw(st.booleans()),
        obs_resample=mode,
        obs_rate_hz=None if mode == "none" else draw(st.none() | st.sampled_from([10, 20, 25, 40, 50])),
        obs_align="at_or_before" if mode != "none" else draw(st.sampled_from(["at_or_before", "at_or_after"])),
    )


@PROPS
@given(episodes(), specs())
def test_property_window_contents(ep_shapes, spec):
    """Every window against the exact oracle (tests/window_oracle.py), expected rows drawn independently."""
    ep, sh = ep_shapes
    layout = SampleLayout(action_dim=sh["D"], action_rate_hz=float(sh["r_a"]),
                          signals=(("observations", sh["S"], float(sh["r_o"])),),
                          cameras=(("frames", 2, 3, float(sh["fps"])),))
    rspec = spec.resolve(layout)  # always resolves: lengths are at least 50 ms at 10 Hz or more
    A = oracle_length(spec.acts_length_sec, Fraction(sh["r_a"]))
    out_rate = Fraction(sh["r_o"]) if spec.obs_resample == "none" else (
        Fraction(sh["r_a"]) if spec.obs_rate_hz is None else dec(spec.obs_rate_hz))
    O = oracle_length(spec.obs_length_sec, out_rate)  # noqa: E741
    assert (rspec.A, rspec.signals["observations"].O) == (A, O)
    n_a = len(ep.action_ts)
    observations = ep.signals["observations"][1]
    clip = ep.cameras["frames"]
    limit = n_a - A + 1 if spec.full_windows_only else n_a
    ks = list(range(0, max(limit, 0), spec.stride))
    assert anchors(n_a, A, spec.stride, spec.full_windows_only).tolist() == ks
    assert num_anchors(np.array([n_a]), A, spec.stride, spec.full_windows_only)[0] == len(ks)
    schema = sample_schema(rspec, [])
    offsets = list(spec.video_frame_offsets)
    for k in ks:
        s = cut_window(ep, k, rspec, 0, 0)
        assert set(s) == set(schema)
        for key, v in s.items():
            assert str(v.dtype) == schema[key]["dtype"] and list(v.shape) == schema[key]["shape"], key
        assert float(s["t0"]) == float(ep.action_ts[k]) and int(s["anchor_index"]) == k
        amask = np.array([k + i < n_a for i in range(A)])
        np.testing.assert_array_equal(s["actions_mask"], amask)
        np.testing.assert_array_equal(s["actions"][amask], ep.actions[k : k + A])
        assert not s["actions"][~amask].any()
        t = sh["a"][k] + dec(spec.obs_offset_sec)
        if spec.obs_resample == "none":
            want, wmask, _ = oracle_rows(sh["o"], observations, t, Fraction(sh["r_o"]), O, spec.obs_align)
            np.testing.assert_array_equal(s["observations_mask"], wmask)
            np.testing.assert_array_equal(s["observations"], want)
        else:
            want, wmask = oracle_resampled(sh["o"], observations, t, out_rate, O, spec.obs_resample)
            np.testing.assert_array_equal(s["observations_mask"], wmask)
            np.testing.assert_allclose(s["observations"], want, rtol=1e-5, atol=1e-5)
        fmask = s["frames_mask"]
        if clip is None:
            assert not fmask.any() and not s["frames"].any()
            continue
        if sh["v1"]:
            base = math.floor((sh["a"][k] - sh["f"][0]) * sh["fps"] + Fraction(1, 2))
        else:
            base = oracle_base_frame(sh["f"], sh["a"][k], Fraction(sh["fps"]))
        idx = np.array([base + o for o in offsets])
        np.testing.assert_array_equal(fmask, (idx >= 0) & (idx < len(clip.frames)))
        np.testing.assert_array_equal(s["frames"][fmask], clip.frames[idx[fmask]])
        np.testing.assert_array_equal(s["frames_ts"][fmask], clip.ts[idx[fmask]])
        assert not s["frames"][~fmask].any()


@PROPS
@given(
    st.sampled_from([0, 25, 3_485_837_824]),  # half-seconds: 0, 12.5 s, an epoch time
    st.integers(10, 2000),
    st.integers(1, 25),
    st.integers(0, 2**31),
    st.sampled_from(["linear", "nearest"]),
)
def test_property_resampling_hits_source_timestamps(half_secs, deci_hz, O, seed, mode):  # noqa: E741
    """Source samples at resample times give exactly the source values (linear and nearest); every value and
    mask equals the exact oracle. Extra samples lie on an eighth-period grid, so exact ties happen."""
    rng = np.random.default_rng(seed)
    rate = Fraction(deci_hz, 10)
    t_start = Fraction(half_secs, 2)
    keep = rng.random(O) < 0.5
    grid = [t_start + Fraction(i) / rate for i in range(O)]
    extra = [t_start + Fraction(int(m), 8) / rate for m in rng.integers(-16, 8 * O + 16, size=rng.integers(0, 6))]
    T = sorted({g for g, kept in zip(grid, keep) if kept} | set(extra))
    if not T:
        T = [t_start]
    ts = np.array([float(x) for x in T])
    src = rng.normal(size=(len(T), 2)).astype(np.float32)
    win = SignalWindow(O=O, width=2, rate_hz=float(rate), mode=mode, offset_sec=0.0)
    vals, mask = observation_rows(ts, src, float(t_start), win)
    assert vals.shape == (O, 2) and vals.dtype == np.float32 and mask.shape == (O,)
    want, wmask = oracle_resampled(T, src, t_start, rate, O, mode)
    np.testing.assert_array_equal(mask, wmask)
    for i in range(O):
        if grid[i] in T:
            np.testing.assert_array_equal(vals[i], src[T.index(grid[i])])
    np.testing.assert_allclose(vals, want, rtol=1e-5, atol=1e-5)


@PROPS
@given(
    st.lists(st.integers(0, 40), min_size=0, max_size=8),
    st.integers(1, 12),
    st.integers(1, 5),
    st.booleans(),
)
def test_property_window_index_bijection(n_actions, A, stride, full):
    rspec = ResolvedSpec(spec=WindowSpec(1.0, 1.0, stride=stride, full_windows_only=full),
                         layout=SampleLayout(1, 1.0), A=A, signals={}, cameras={})
    index = WindowIndex(n_actions, rspec)
    expected = [(e, int(k)) for e, n in enumerate(n_actions) for k in anchors(n, A, stride, full)]
    assert len(index) == len(expected)
    got = []
    for i in range(len(index)):
        ep, j, k = index.locate(i)
        got.append((int(ep), int(k)))
        assert int(k) == int(j) * stride
        assert index.window_of(int(ep), int(j)) == i
    assert got == expected  # canonical order, each (episode, anchor) exactly once
    if len(index):
        ep, j, k = index.locate(np.arange(len(index)))  # vectorised agrees with scalar
        assert list(zip(ep.tolist(), k.tolist())) == expected
    for n in n_actions:
        ks = anchors(n, A, stride, full)
        assert all(0 <= k < n for k in ks)
        if full:
            assert all(k + A <= n for k in ks)
        if ks.size:
            assert ks[-1] + stride >= (n - A + 1 if full else n)  # no anchor left out at the end


def test_round_half_up_rounds_halves_up_and_is_exact_for_fractions():
    """The one rounding rule: halves go up (also below zero), a Fraction is never rounded through a float."""
    from wdspq.timegrid import round_half_up

    assert [round_half_up(x) for x in (2.5, 2.4999, -2.5, -2.5001, 0.0, np.float64(7.5))] == [3, 2, -2, -3, 0, 8]
    assert round_half_up(Fraction(145, 1000) * 100) == 15  # 14.5 exactly; the float 0.145 * 100 is 14.499...
    assert round_half_up(Fraction(1, 2) - Fraction(1, 10**30)) == 0  # a float would make this 1
    assert all(type(round_half_up(x)) is int for x in (2.5, Fraction(5, 2), np.float64(2.5)))
