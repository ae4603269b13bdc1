"""Fuzz: random bytes, truncations and byte flips of a valid shard, streamed under both policies.

The stream must either yield valid samples (the manifest's keys, dtypes and shapes) or raise a
`WdspqError`; never hang, never raise another exception type. With `on_error="skip"` it must never
raise and must keep every batch the size it would have been, delivering every window of the
untouched shards. Each example runs in a thread with a time limit, so a hang fails instead of blocking.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wdspq import ShardStream, StreamLoader, WindowSpec, export_shards
from wdspq.build import build_synthetic
from wdspq.errors import WdspqError
from wdspq.shardfmt import RAW, load_manifest, read_run

TARGET = 2  # the shard that is mutated
SPS = 8
SHARD_BYTES = 30720  # the target shard's size (8 samples of 3072 bytes + the tar end)
TIME_LIMIT_S = 30.0
SETTINGS = settings(
    max_examples=int(os.environ.get("WDSPQ_FUZZ_EXAMPLES", 50)),  # raise it for a soak run
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def export(tmp_path_factory, tokenizer_path) -> dict[str, Any]:
    """A tiny export (59 windows, 8 shards), a working copy whose TARGET shard the examples overwrite, and the clean epoch."""
    d = tmp_path_factory.mktemp("fuzz")
    build_synthetic(d / "t.parquet", episodes=3, seconds=1.0, image_size=8, video_size=16, seed=1, progress=False)
    spec = WindowSpec(acts_length_sec=0.1, obs_length_sec=0.1, video_frame_offsets=[0], stride=5, max_text_tokens=8)
    export_shards(d / "t.parquet", d / "clean", spec, tokenizer=tokenizer_path, samples_per_shard=SPS, seed=0,
                  progress=False, encoding=RAW)  # fixed-size samples: the strategy knows every boundary  # fmt: skip
    shutil.copytree(d / "clean", d / "work")
    man = json.loads((d / "clean" / "manifest.json").read_text())
    entry = man["shards"][TARGET]
    schema = {e["key"]: (np.dtype(e["dtype"]), tuple(e["shape"])) for e in man["sample_schema"]}
    clean_wi, clean_sizes = _epoch(d / "clean", "raise", False)
    m = load_manifest(str(d / "clean"))
    target_windows = {int(s["window_index"]) for s in read_run(m, TARGET, 0, m.shard_sizes[TARGET])}
    return {
        "work": d / "work",
        "shard": d / "work" / entry["name"],
        "original": (d / "clean" / entry["name"]).read_bytes(),
        "offsets": m.offsets(TARGET).tolist(),
        "schema": schema,
        "clean_wi": clean_wi,
        "clean_sizes": clean_sizes,
        "target_windows": target_windows,
    }


def _epoch(src: Path, on_error: str, verify: bool, schema: dict | None = None) -> tuple[list[int], list[int]]:
    """(window_index per sample, batch sizes) of one epoch; checks every sample against `schema`."""
    loader = StreamLoader(ShardStream(src, seed=5, on_error=on_error, verify_checksums=verify), batch_size=4)
    wi: list[int] = []
    sizes: list[int] = []
    for b in loader:
        n = len(b["window_index"])
        if schema is not None:
            assert set(b) == set(schema), sorted(b)
            for k, (dtype, shape) in schema.items():
                v = b[k].numpy()
                assert v.dtype == dtype and v.shape == (n, *shape), (k, v.dtype, v.shape)
        wi += b["window_index"].tolist()
        sizes.append(n)
    return wi, sizes


def _with_time_limit(fn, limit: float = TIME_LIMIT_S) -> tuple[Any, BaseException | None]:
    """Run fn() in a daemon thread: (result, exception); fails the test if it does not finish in time."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(limit)
    if t.is_alive():
        pytest.fail(f"the stream did not finish within {limit} s (a hang)")
    return box.get("result"), box.get("error")


# mutations of the target shard's bytes -------------------------------------------------------------


@st.composite
def mutations(draw) -> tuple[str, Any]:
    kind = draw(st.sampled_from(["random", "truncate", "flip", "flip-headers", "truncate+flip"]))
    size = SHARD_BYTES
    if kind == "random":
        return kind, (draw(st.integers(0, 2 * size)), draw(st.integers(0, 2**32 - 1)))
    if kind == "truncate":
        return kind, draw(st.integers(0, size - 1))
    flips = st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 255)), min_size=1, max_size=6)
    if kind == "flip":
        return kind, draw(flips)
    if kind == "flip-headers":  # inside a tar header (512 bytes) or the npy header after it
        spots = st.tuples(st.integers(0, SPS - 1), st.integers(0, 512 + 127), st.integers(1, 255))
        return kind, draw(st.lists(spots, min_size=1, max_size=4))
    return kind, (draw(st.integers(0, size - 1)), draw(flips))


def _apply(original: bytes, offsets: list[int], mutation: tuple[str, Any]) -> bytes:
    kind, arg = mutation
    if kind == "random":
        n, seed = arg
        return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    if kind == "truncate":
        return original[:arg]
    data = bytearray(original)
    if kind == "flip":
        for pos, x in arg:
            data[pos] ^= x
    elif kind == "flip-headers":
        for sample, j, x in arg:
            data[offsets[sample] + j] ^= x
    else:
        cut, flips = arg
        for pos, x in flips:
            data[pos] ^= x
        data = data[:cut]
    return bytes(data)


@SETTINGS
@given(mutation=mutations(), verify=st.booleans())
def test_fuzz_raise_policy(export, mutation, verify):
    export["shard"].write_bytes(_apply(export["original"], export["offsets"], mutation))
    try:
        result, error = _with_time_limit(lambda: _epoch(export["work"], "raise", verify, export["schema"]))
    finally:
        export["shard"].write_bytes(export["original"])
    if error is not None:
        assert isinstance(error, WdspqError), f"{type(error).__name__}: {error}"
        assert "\n" not in str(error)
    else:
        wi, sizes = result
        assert sizes == export["clean_sizes"]


@SETTINGS
@given(mutation=mutations(), verify=st.booleans())
def test_fuzz_skip_policy(export, mutation, verify):
    export["shard"].write_bytes(_apply(export["original"], export["offsets"], mutation))
    try:
        result, error = _with_time_limit(lambda: _epoch(export["work"], "skip", verify, export["schema"]))
    finally:
        export["shard"].write_bytes(export["original"])
    assert error is None, f"{type(error).__name__}: {error}"
    wi, sizes = result
    assert sizes == export["clean_sizes"]
    got = Counter(wi)
    untouched = [w for w in export["clean_wi"] if w >= 0 and w not in export["target_windows"]]
    assert all(got[w] >= 1 for w in untouched)
    if verify and _apply(export["original"], export["offsets"], mutation) != export["original"]:
        assert not (set(wi) & export["target_windows"])  # a damaged shard is skipped whole


def test_strategy_matches_the_export(export):
    """The mutation strategy's positions assume this size: update SHARD_BYTES if the export layout changes."""
    assert len(export["original"]) == SHARD_BYTES
