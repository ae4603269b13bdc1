"""Damaged and edited tables: every reader names the table, row group and column; a flipped byte inside
a data page is caught by the page checksums; an edited rate fails validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from wdspq import ParquetWindowDataset, export_shards
from wdspq.build import build_synthetic
from wdspq.cli import main
from wdspq.errors import SchemaError, TableReadError, WdspqError
from wdspq.table.file import has_page_checksums
from wdspq.table.validate import validate_table
from wdspq.verify import verify_shards

SPEC = {"acts_length_sec": 0.5, "obs_length_sec": 0.5, "video_frame_offsets": [-1, 0], "stride": 5}


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    """A table as `wdspq build` writes it, in row groups of 2 episodes (6 episodes: 3 row groups)."""
    out = tmp_path_factory.mktemp("faulty") / "t.parquet"
    build_synthetic(out, episodes=6, seconds=2.0, image_size=16, video_size=32, seed=3, row_group_size=2, progress=False)
    return out


def chunk(path: Path, group: int, column: str) -> tuple[int, int]:
    """(first byte, bytes) of a column chunk's data pages."""
    md = pq.ParquetFile(path).metadata.row_group(group)
    for i in range(md.num_columns):
        c = md.column(i)
        if c.path_in_schema.split(".")[0] == column:
            start = c.dictionary_page_offset if c.has_dictionary_page and c.dictionary_page_offset else c.data_page_offset
            return start, c.total_compressed_size
    raise KeyError(column)


def damaged(src: Path, dst: Path, offset: int, n: int = 1, zero: bool = False) -> Path:
    """A copy of `src` with `n` bytes at `offset` zeroed or flipped (xor 0xFF)."""
    shutil.copy(src, dst)
    with open(dst, "r+b") as f:
        f.seek(offset)
        b = f.read(n)
        f.seek(offset)
        f.write(bytes(n) if zero else bytes(x ^ 0xFF for x in b))
    return dst


def middle_of(path: Path, group: int, column: str) -> int:
    start, size = chunk(path, group, column)
    return start + size // 2


def test_built_tables_have_page_checksums(table, tmp_path):
    assert has_page_checksums(table) is True
    plain = tmp_path / "plain.parquet"
    pq.write_table(pq.read_table(table), plain)  # pyarrow's default: no checksums
    assert has_page_checksums(plain) is False


def test_flipped_byte_is_detected_by_validate_dataset_export_and_verify(table, tmp_path, tokenizer_path, capsys):
    """One flipped byte in the middle of an actions page (row group 1): before page checksums this
    decoded to other action values and passed validate, export and verify."""
    bad = damaged(table, tmp_path / "flipped.parquet", middle_of(table, 1, "actions"))
    words = [str(bad), "row group 1", "rows 2..3", "column 'actions'", "checksum"]

    with pytest.raises(SchemaError) as e:  # validate reports every violation it finds, these first
        validate_table(bad)
    assert all(w in str(e.value) for w in words), str(e.value)
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err

    ds = ParquetWindowDataset(bad, SPEC, tokenizer=tokenizer_path)  # ids, texts and action times are intact
    first_of_group1 = int(ds.index.starts[2])
    ds[0]  # row group 0 reads
    with pytest.raises(TableReadError) as e:
        ds[first_of_group1]
    assert all(w in str(e.value) for w in words), str(e.value)

    with pytest.raises(TableReadError) as e:
        export_shards(bad, tmp_path / "sh", SPEC, tokenizer=tokenizer_path, progress=False)
    assert all(w in str(e.value) for w in words), str(e.value)

    good = tmp_path / "good"
    export_shards(table, good, SPEC, tokenizer=tokenizer_path, samples_per_shard=40, progress=False)
    assert bad.stat().st_size - middle_of(table, 1, "actions") > 65536  # outside the footer fingerprint
    report = verify_shards(str(good), table=str(bad), tokenizer=tokenizer_path)
    assert not report.ok
    text = "\n".join(map(str, report.problems))
    assert all(w in text for w in words), text
    assert len(report.problems) == 1  # one problem per damaged row group, not one per window


@pytest.mark.parametrize("column", ["actions", "action_ts", "frames"])
def test_zeroed_bytes_of_a_table_without_checksums_are_named(table, tmp_path, tokenizer_path, column):
    """A table written by another tool (no page checksums): zeroed bytes inside a row group give pyarrow's
    bare 'Unexpected end of stream' / 'ZSTD decompression failed' / thrift errors; ours name the place."""
    plain = tmp_path / "plain.parquet"
    pq.write_table(pq.read_table(table), plain, row_group_size=2, compression="zstd")
    bad = damaged(plain, tmp_path / "zeroed.parquet", middle_of(plain, 2, column), n=64, zero=True)
    words = [str(bad), "row group 2", "rows 4..5", f"column {column!r}", "damaged"]
    with pytest.raises(SchemaError) as e:  # validate reports every violation it finds, these first
        validate_table(bad)
    assert all(w in str(e.value) for w in words), str(e.value)
    if column != "action_ts":  # the dataset reads every episode's action times when it is made
        ds = ParquetWindowDataset(bad, SPEC, tokenizer=tokenizer_path)
        with pytest.raises(TableReadError) as e:
            ds[len(ds) - 1]
    else:
        with pytest.raises(TableReadError) as e:
            ParquetWindowDataset(bad, SPEC, tokenizer=tokenizer_path)
    assert all(w in str(e.value) for w in words), str(e.value)
    assert isinstance(e.value, WdspqError)


def test_info_names_a_damaged_row_group(table, tmp_path, capsys):
    bad = damaged(table, tmp_path / "flipped.parquet", middle_of(table, 0, "action_ts"))
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "row group 0" in err and "column 'action_ts'" in err, err


def test_table_without_checksums_still_validates_with_a_note(table, tmp_path, capsys):
    plain = tmp_path / "plain.parquet"
    pq.write_table(pq.read_table(table), plain)
    validate_table(plain)
    assert main(["validate", str(plain)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "no page checksums" in out
    assert main(["validate", str(table)]) == 0
    assert "no page checksums" not in capsys.readouterr().out


def _with_rate(src: Path, dst: Path, stream: str, rate: float) -> Path:
    t = pq.read_table(src)
    meta = json.loads(t.schema.metadata[b"wdspq"])
    for s in meta["streams"]:
        if s["name"] == stream:
            s["rate_hz"] = rate
    pq.write_table(t.replace_schema_metadata({b"wdspq": json.dumps(meta).encode()}), dst)
    return dst


def test_edited_rate_fails_validation(table, tmp_path):
    """rate_hz 100 -> 50 in the metadata silently halved every window; validate derives it again."""
    edited = _with_rate(table, tmp_path / "edited.parquet", "actions", 50.0)
    with pytest.raises(SchemaError) as e:
        validate_table(edited)
    msg = str(e.value)
    assert "stream 'actions'" in msg and "rate_hz 50.0" in msg and "give 100 Hz" in msg, msg
    obs = _with_rate(table, tmp_path / "obs.parquet", "observations", 49.0)
    with pytest.raises(SchemaError, match="stream 'observations' has rate_hz 49.0"):
        validate_table(obs)
    same = _with_rate(table, tmp_path / "same.parquet", "actions", 100.0)
    validate_table(same)


def test_verify_parity_reads_runs_and_falls_back_per_sample(table, tmp_path, tokenizer_path, monkeypatch):
    """Parity reads each shard's samples as runs; a run that fails part-way is finished one sample at a
    time, so every window is still compared and a bad one is named on its own."""
    import wdspq.verify as verify
    from wdspq.errors import ShardError

    out = tmp_path / "sh"
    export_shards(table, out, SPEC, tokenizer=tokenizer_path, samples_per_shard=40, progress=False)
    runs: list[tuple[int, int, int]] = []
    real = verify.read_records

    def flaky(m, s, a, b, codec=None):
        runs.append((s, a, b))
        for i, rec in enumerate(real(m, s, a, b, codec)):
            if len(runs) == 1 and i == 3:
                raise ShardError("injected: the connection broke")
            yield rec

    monkeypatch.setattr(verify, "read_records", flaky)
    report = verify_shards(str(out), table=str(table), tokenizer=tokenizer_path)
    assert report.ok, [str(p) for p in report.problems]
    assert report.parity_checked == report.samples
    assert len(runs) == report.shards  # one run per shard: no per-sample reads
