"""validate_table: a good table passes; every rule rejects a crafted bad table, naming file, episode and column."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wdspq.errors import SchemaError
from wdspq.media import encode_mp4, encode_png
from wdspq.table import read_meta
from wdspq.table.timestamps import check_timestamps
from wdspq.table.validate import validate_table

ROW = 3  # the row every crafted fault is put into; row groups of 2 put it in the second group


@pytest.fixture(scope="module")
def base(small_table):
    """(table, metadata dict, episode id of ROW) of a valid table."""
    table = pq.read_table(small_table)
    meta = json.loads(read_meta(small_table).to_json())
    return table, meta, table.column("episode_id")[ROW].as_py()


def write(path, table: pa.Table, meta: dict | str | None, row_group_size: int = 2) -> str:
    """Write a table the way a tool would, with our metadata in the footer's key-value metadata."""
    table = table.replace_schema_metadata(None)
    with pq.ParquetWriter(path, table.schema) as w:
        w.write_table(table, row_group_size=row_group_size)
        if meta is not None:
            w.add_key_value_metadata({"wdspq": meta if isinstance(meta, str) else json.dumps(meta)})
    return str(path)


def set_row(table: pa.Table, column: str, row: int, value, type: pa.DataType | None = None) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    i = table.schema.get_field_index(column)
    t = type or table.schema.field(column).type
    return table.set_column(i, pa.field(column, t), pa.array(values, type=t))


def recast(table: pa.Table, column: str, type: pa.DataType) -> pa.Table:
    i = table.schema.get_field_index(column)
    return table.set_column(i, pa.field(column, type), pa.array(table.column(column).to_pylist(), type=type))


def row_of(table, column):
    return table.column(column)[ROW].as_py()


def _swap_ts(t):
    ts = row_of(t, "action_ts")
    ts[5], ts[6] = ts[6], ts[5]
    return set_row(t, "action_ts", ROW, ts)


def _nan_ts(t):
    ts = row_of(t, "observations_ts")
    ts[2] = float("nan")
    return set_row(t, "observations_ts", ROW, ts)


def _inf_ts(t):
    ts = row_of(t, "action_ts")
    ts[-1] = float("inf")
    return set_row(t, "action_ts", ROW, ts)


def _nan_action(t):
    a = row_of(t, "actions")
    a[4][2] = float("nan")
    return set_row(t, "actions", ROW, a)


def _inf_obs(t):
    o = row_of(t, "observations")
    o[0][0] = float("-inf")
    return set_row(t, "observations", ROW, o)


def _empty(t):
    return set_row(set_row(t, "action_ts", ROW, []), "actions", ROW, [])


def _empty_obs(t):
    return set_row(set_row(t, "observations_ts", ROW, []), "observations", ROW, [])


def _short_actions(t):
    return set_row(t, "actions", ROW, row_of(t, "actions")[:-1])


def _short_obs_ts(t):
    return set_row(t, "observations_ts", ROW, row_of(t, "observations_ts")[:-3])


def _loose_dims(column, dim):
    def f(t):
        t = recast(t, column, pa.list_(pa.list_(pa.float32())))
        v = row_of(t, column)
        v[1] = v[1][: dim - 1]
        return set_row(t, column, ROW, v)

    return f


def _collapsed(t):
    n = len(row_of(t, "action_ts"))
    epoch32 = float(np.float32(1742918912.123))
    return set_row(t, "action_ts", ROW, [epoch32] * n)


def _bad_image(t):
    return set_row(t, "image", ROW, b"\x89PNG\r\n\x1a\n not really a png")


def _bad_video(t):
    v = row_of(t, "frames")
    return set_row(t, "frames", ROW, v[: len(v) // 2])


def _garbage_video(t):
    return set_row(t, "frames", ROW, bytes(range(256)) * 8)


def _small_frames(t):
    return set_row(t, "frames", ROW, encode_mp4(np.zeros((5, 16, 16, 3), np.uint8), fps=20))


def _big_image(t):
    return set_row(t, "image", ROW, encode_png(np.zeros((20, 16, 3), np.uint8)))


def _frame_count(t):
    ts = row_of(t, "frames_ts")
    return set_row(t, "frames_ts", ROW, ts[:-2])


def _frames_ts_order(t):
    ts = row_of(t, "frames_ts")
    ts[3] = ts[2]
    return set_row(t, "frames_ts", ROW, ts)


def _dup_id(t):
    return set_row(t, "episode_id", ROW, t.column("episode_id")[1].as_py())


def _null_text(t):
    return set_row(t, "text", ROW, None)




# (name, mutation, column named, words the message must contain)
EPISODE_FAULTS: list[tuple[str, Callable, str, list[str]]] = [
    ("not-increasing", _swap_ts, "action_ts", ["not strictly increasing"]),
    ("nan-timestamp", _nan_ts, "observations_ts", ["finite", "nan"]),
    ("inf-timestamp", _inf_ts, "action_ts", ["finite", "inf"]),
    ("nan-action", _nan_action, "actions", ["finite", "nan"]),
    ("inf-observation", _inf_obs, "observations", ["finite", "inf"]),
    ("empty-episode", _empty, "action_ts", ["empty episode"]),
    ("empty-observations", _empty_obs, "observations_ts", ["empty episode"]),
    ("length-mismatch", _short_actions, "actions", ["rows but 'action_ts' has"]),
    ("length-mismatch-ts", _short_obs_ts, "observations", ["rows but 'observations_ts' has"]),
    ("action-dim", _loose_dims("actions", 7), "actions", ["has 6 values, expected 7", "stream 'actions'"]),
    ("obs-dim", _loose_dims("observations", 12), "observations", ["has 11 values, expected 12", "stream 'observations'"]),
    ("float32-collapsed", _collapsed, "action_ts", ["not increasing", "float32", "wdspq build hdf5"]),
    ("bad-image", _bad_image, "image", ["undecodable image"]),
    ("truncated-video", _bad_video, "frames", ["the clip has", "but 'frames_ts' has"]),
    ("garbage-video", _garbage_video, "frames", ["undecodable video"]),
    ("frame-size", _small_frames, "frames", ["size 16x16 differs from 32x32"]),
    ("image-size", _big_image, "image", ["size 20x16 differs from 16x16"]),
    ("frame-count", _frame_count, "frames", ["frames but 'frames_ts' has", "one per frame"]),
    ("frames-ts-order", _frames_ts_order, "frames_ts", ["not strictly increasing"]),
    ("duplicate-id", _dup_id, "episode_id", ["duplicate id (first at row 1)"]),
    ("null-text", _null_text, "text", ["is null"]),
]


def test_good_table_passes(small_table):
    meta = validate_table(small_table, full_media=True)
    assert meta.num_episodes == 6 and meta.actions.width == 7 and meta.stream("observations").width == 12


def test_rewritten_good_table_passes(base, tmp_path):
    table, meta, _ = base
    assert validate_table(write(tmp_path / "t.parquet", table, meta)).num_episodes == 6


@pytest.mark.parametrize("name,mutate,column,words", EPISODE_FAULTS, ids=[f[0] for f in EPISODE_FAULTS])
def test_episode_fault_is_named(base, tmp_path, name, mutate, column, words):
    table, meta, ep_id = base
    if name == "duplicate-id":
        ep_id = table.column("episode_id")[1].as_py()
    path = write(tmp_path / f"{name}.parquet", mutate(table), meta)
    with pytest.raises(SchemaError) as ei:
        validate_table(path)
    msg = str(ei.value)
    assert msg.startswith(path), msg
    assert f"episode {ep_id!r} (row {ROW})" in msg, msg
    assert f"column {column!r}" in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    assert "\n" not in msg


def test_full_media_decodes_every_frame(base, tmp_path):
    table, meta, _ = base
    path = write(tmp_path / "ok.parquet", table, meta)
    assert validate_table(path, full_media=True).num_episodes == 6


# Faults of the file or of a whole column: the message names the file and the column (no single episode).
def _drop(col):
    return lambda t, m: (t.drop_columns([col]), m)


def _retype(col, typ):
    return lambda t, m: (recast(t, col, typ), m)


def _meta(**changes):
    return lambda t, m: (t, {**m, **changes})


def _stream_meta(name, **changes):
    def f(t, m):
        return t, {**m, "streams": [{**s, **changes} if s["name"] == name else s for s in m["streams"]]}

    return f


TABLE_FAULTS = [
    ("missing-column", _drop("observations"), ["column 'observations': missing"]),
    ("missing-ts", _drop("action_ts"), ["column 'action_ts' (stream 'actions'): missing"]),
    ("wrong-type-frames-ts", _retype("frames_ts", pa.list_(pa.float32())), ["column 'frames_ts' (stream 'frames'): wrong type"]),
    ("float32-timestamps", _retype("action_ts", pa.list_(pa.float32())), ["column 'action_ts' (stream 'actions'): wrong type"]),
    ("binary-text", _retype("text", pa.binary()), ["column 'text': wrong type"]),
    ("dim-vs-meta", _stream_meta("actions", width=6, names=None), ["column 'actions': dimension 7 does not match the width 6"]),
    ("obs-dim-vs-meta", _stream_meta("observations", width=13, names=None), ["column 'observations': dimension 12 does not match the width 13"]),
    ("bad-rate", _stream_meta("actions", rate_hz=0.0), ["stream 'actions' rate is 0.0"]),
    ("camera-size-vs-meta", _stream_meta("frames", height=48), ["differs from 48x32 (the frame size of camera 'frames'"]),
    ("undescribed-camera", _drop("frames_ts"), ["column 'frames_ts' (stream 'frames'): missing"]),
    ("version", _meta(format_version=99), ["format version 99 is not supported"]),
    ("meta-incomplete", lambda t, m: (t, {k: v for k, v in m.items() if k != "streams"}), ["incomplete"]),
    ("no-rows", lambda t, m: (t.slice(0, 0), {**m, "num_episodes": 0}), ["the table has no episodes"]),
    ("meta-missing", lambda t, m: (t, None), ["no 'wdspq' schema metadata", "wdspq build"]),
    ("meta-not-json", lambda t, m: (t, "{not json"), ["not valid JSON"]),
]


@pytest.mark.parametrize("name,mutate,words", TABLE_FAULTS, ids=[f[0] for f in TABLE_FAULTS])
def test_table_fault_is_named(base, tmp_path, name, mutate, words):
    table, meta, _ = base
    t, m = mutate(table, meta)
    path = write(tmp_path / f"{name}.parquet", t, m)
    with pytest.raises(SchemaError) as ei:
        validate_table(path)
    msg = str(ei.value)
    assert msg.startswith(path), msg
    for w in words:
        assert w in msg, (w, msg)


def test_seed_layout_table_gets_a_hint(tmp_path):
    t = pa.table(
        {
            "text": ["a"],
            "actions": pa.array([[[0.0, 1.0], [0.1, 2.0]]], type=pa.list_(pa.list_(pa.float64()))),
            "observations": pa.array([[[0.0, 1.0]]], type=pa.list_(pa.list_(pa.float64()))),
            "image": ["x.png"],
            "video": ["x.mp4"],
        }
    )
    meta = {"format_version": 1, "action_dim": 1, "obs_dim": 1, "action_rate_hz": 10.0, "observation_rate_hz": 10.0}
    path = write(tmp_path / "seed.parquet", t, meta)
    with pytest.raises(SchemaError, match="wdspq build seed"):
        validate_table(path)


def test_not_a_table(tmp_path):
    p = tmp_path / "notes.parquet"
    p.write_text("hello")
    with pytest.raises(SchemaError, match="not a readable Parquet file"):
        validate_table(p)
    with pytest.raises(SchemaError, match="does not exist"):
        validate_table(tmp_path / "missing.parquet")


def test_many_violations_are_counted(base, tmp_path):
    table, meta, _ = base
    t = _nan_action(_bad_image(table))
    path = write(tmp_path / "two.parquet", t, meta)
    with pytest.raises(SchemaError) as ei:
        validate_table(path)
    assert "and 1 more violation" in str(ei.value)
    assert len(ei.value.violations) == 2


def test_check_timestamps_messages():
    check_timestamps(np.array([0.0, 0.5, 1.0]), "x")
    with pytest.raises(SchemaError, match="float32-collapsed"):
        check_timestamps(np.full(10, 1742918912.0), "x")
    with pytest.raises(SchemaError, match="empty episode"):
        check_timestamps(np.zeros(0), "x")
    with pytest.raises(SchemaError, match=r"timestamp 2 \(1.0\) <= timestamp 1 \(2.0\)"):
        check_timestamps(np.array([0.0, 2.0, 1.0]), "x")


def test_validate_a_table_on_s3(small_table, s3_bucket, capsys):
    """`wdspq validate s3://...` reads the table through the storage layer (the URL was once mangled into a
    local path) and takes --s3-timeout like the other S3 commands."""
    from pathlib import Path

    from wdspq.cli import main
    from wdspq.storage import open_storage

    open_storage(s3_bucket).put_bytes("t.parquet", Path(small_table).read_bytes())
    url = f"{s3_bucket}/t.parquet"
    assert main(["validate", url, "--s3-timeout", "30"]) == 0
    assert capsys.readouterr().out.startswith(f"{url}: valid (")
    assert main(["validate", f"{s3_bucket}/missing.parquet"]) == 2
    assert f"{s3_bucket}/missing.parquet" in capsys.readouterr().err
