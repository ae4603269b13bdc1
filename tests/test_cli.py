"""The `wdspq` command line: commands work, bad input gives one line and exit code 2, killed builds leave nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wdspq.cli import COMMANDS, main, make_parser
from wdspq.table import read_meta

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "wdspq", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def assert_one_line_error(rc: int, err: str) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("wdspq: error: "), err
    assert "Traceback" not in err


def test_build_validate_info(tmp_path, capsys):
    out = tmp_path / "t.parquet"
    rc = main(["build", "synthetic", str(out), "--episodes", "3", "--seconds", "1", "--image-size", "8",
               "--video-size", "16", "--no-progress"])  # fmt: skip
    assert rc == 0 and out.exists()
    assert "wrote" in capsys.readouterr().out
    assert main(["validate", str(out), "--full-media"]) == 0
    assert "valid (3 episodes; streams: actions (actions), observations (signal), frames (camera), image (image))" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    for word in ("episodes     3", "D=7 at 100", "S=12 at 50", "16x16 (HxW) at 20 fps", "8x8 (HxW)", "KiB", "total"):
        assert word in info, info


def test_every_command_has_help(capsys):
    parser = make_parser()
    names = [a for a in parser._subparsers._group_actions[0].choices]  # noqa: SLF001
    assert len(names) == len(COMMANDS)
    for argv in ([], *[[n] for n in names], ["build", "synthetic"], ["build", "seed"], ["build", "hdf5"]):
        assert main([*argv, "--help"]) == 0
        text = capsys.readouterr().out
        assert "usage: wdspq" in text and len(text) > 200, argv


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "notes.txt").write_text("not a table\n")
    (d / "notes.parquet").write_bytes(b"PAR1 but not really")
    seed_like = pa.table({"text": ["a"], "actions": [[[0.0, 1.0]]], "observations": [[[0.0, 1.0]]]})
    pq.write_table(seed_like, d / "seed_layout.parquet")
    (d / "blocker").write_text("a file where a folder is expected")
    return d


BAD = [
    ("validate-missing", ["validate", "{d}/missing.parquet"], "does not exist"),
    ("info-missing", ["info", "{d}/missing.parquet"], "does not exist"),
    ("validate-text-file", ["validate", "{d}/notes.txt"], "not a readable Parquet file"),
    ("info-not-parquet", ["info", "{d}/notes.parquet"], "not a readable Parquet file"),
    ("validate-seed-layout", ["validate", "{d}/seed_layout.parquet"], "wdspq build seed"),
    ("seed-missing", ["build", "seed", "{d}/missing.parquet", "{d}/out.parquet"], "does not exist"),
    ("seed-not-parquet", ["build", "seed", "{d}/notes.txt", "{d}/out.parquet"], "not a readable Parquet file"),
    ("episodes-zero", ["build", "synthetic", "{d}/out.parquet", "--episodes", "0"], "--episodes: 0 is too small"),
    ("episodes-text", ["build", "synthetic", "{d}/out.parquet", "--episodes", "many"], "'many' is not an integer"),
    ("odd-video", ["build", "synthetic", "{d}/out.parquet", "--video-size", "15"], "15 is odd"),
    ("unknown-codec", ["build", "synthetic", "{d}/out.parquet", "--video-codec", "vp9"], "invalid choice: 'vp9'"),
    ("lerobot-unknown-codec", ["build", "lerobot", "{d}", "{d}/out.parquet", "--video-codec", "av1"],
     "invalid choice: 'av1'"),
    ("negative-seconds", ["build", "synthetic", "{d}/out.parquet", "--seconds", "-1"], "positive number"),
    ("nan-seconds", ["build", "synthetic", "{d}/out.parquet", "--seconds", "nan"], "positive number"),
    ("unknown-flag", ["build", "synthetic", "{d}/out.parquet", "--colour", "red"], "unrecognized arguments"),
    ("out-under-file", ["build", "synthetic", "{d}/blocker/out.parquet", "--episodes", "1"], "blocker"),
    ("hdf5-missing", ["build", "hdf5", "{d}/nope.h5", "{d}/out.parquet"], "HDF5 input not found"),
    ("hdf5-one-arg", ["build", "hdf5", "{d}/out.parquet"], "then OUT"),
    ("hdf5-out-is-h5", ["build", "hdf5", "{d}/a.h5", "{d}/b.h5"], "the table to write"),
    ("hdf5-not-hdf5", ["build", "hdf5", "{d}/notes.txt", "{d}/out.parquet"], "not a readable HDF5 file"),
    ("hdf5-layout-missing", ["build", "hdf5", "{d}/notes.txt", "{d}/out.parquet", "--layout", "{d}/x.json"], "layout"),
    ("hdf5-layout-bad", ["build", "hdf5", "{d}/notes.txt", "{d}/out.parquet", "--layout", "{d}/notes.txt"], "not valid JSON"),
    ("unknown-command", ["frobnicate"], "invalid choice"),
    ("no-command", [], "required"),
    ("no-source", ["build"], "required"),
    ("no-out", ["build", "synthetic"], "required"),
]


@pytest.mark.parametrize("name,argv,words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_one_line(inputs, capsys, name, argv, words):
    rc = main([a.format(d=inputs) for a in argv])
    err = capsys.readouterr().err
    assert_one_line_error(rc, err)
    assert words in err, err
    assert not (inputs / "out.parquet").exists()


# Each `python -m wdspq` start pays for importing the package, so the subprocess cases are few.
def test_subprocess_error_is_one_line(tmp_path):
    r = run_cli("validate", "missing.parquet", cwd=tmp_path)
    assert_one_line_error(r.returncode, r.stderr)
    assert "missing.parquet: table file does not exist" in r.stderr


def test_parser_loads_no_media_or_table_library(tmp_path):
    """`wdspq --help` and argument errors stay quick: the parser (codec choices included) imports no PyAV,
    Pillow, pyarrow or torch."""
    code = ("import sys; from wdspq.cli import make_parser; make_parser(); "
            "print(sorted(m for m in ('av', 'PIL', 'pyarrow', 'torch') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_subprocess_debug_shows_traceback(tmp_path):
    (tmp_path / "x.parquet").write_text("nope")
    r = run_cli("--debug", "info", "x.parquet", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" in r.stderr and "SchemaError" in r.stderr


def test_debug_accepted_after_the_command(tmp_path, capsys):
    (tmp_path / "x.parquet").write_text("nope")
    assert main(["info", str(tmp_path / "x.parquet"), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("wdspq: error: ")


def test_build_hdf5_command(tmp_path, capsys):
    import h5py

    ns = [1742918912123456789 + k * 10_000_000 for k in range(12)]
    with h5py.File(tmp_path / "ep.h5", "w") as f:
        for n in ns:
            f.create_dataset(f"a/{n}", data=np.ones(3, np.float32) * n % 7)
            f.create_dataset(f"o/{n}", data=np.ones(2))
            f.create_dataset(f"cam/{n}", data=np.full((8, 8, 3), n % 251, np.uint8))
    (tmp_path / "layout.json").write_text('{"actions_group": "a", "observations_group": "o", "text_dataset": ""}')
    out = tmp_path / "t.parquet"
    rc = main(["build", "hdf5", str(tmp_path / "ep.h5"), str(out), "--layout", str(tmp_path / "layout.json"),
               "--frames-group", "cam", "--no-progress"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert "8x8 (HxW) at 100 fps" in capsys.readouterr().out
    assert main(["validate", str(out)]) == 0


def test_bad_table_validate_names_episode(tmp_path, small_table, capsys):
    t = pq.read_table(small_table)
    ts = t.column("action_ts").to_pylist()
    ts[2] = [ts[2][0]] * len(ts[2])
    t = t.set_column(t.schema.get_field_index("action_ts"), t.schema.field("action_ts"), pa.array(ts, type=pa.list_(pa.float64())))
    bad = tmp_path / "bad.parquet"
    with pq.ParquetWriter(bad, t.schema) as w:
        w.write_table(t)
        w.add_key_value_metadata({"wdspq": read_meta(small_table).to_json()})
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert_one_line_error(2, err)
    assert "episode 'synthetic-7-000002' (row 2), column 'action_ts'" in err and "float32" in err


def _wait_for(pred, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


BIG_BUILD = ["build", "synthetic", "big.parquet", "--episodes", "2000", "--seconds", "2", "--image-size", "8",
             "--video-size", "16", "--row-group-size", "4"]  # fmt: skip


def _start_build(tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "wdspq", *BIG_BUILD],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _temp_files(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.iterdir() if p.name.startswith(".big.parquet.tmp-")]


def _temp_has_data(tmp_path: Path) -> bool:
    return any(p.stat().st_size > 10_000 for p in _temp_files(tmp_path))


@pytest.mark.slow
def test_sigkill_leaves_no_table(tmp_path):
    for _ in range(2):
        proc = _start_build(tmp_path)
        try:
            assert _wait_for(lambda: _temp_has_data(tmp_path), 60), "build never started writing"
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: the build and any workers
            proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
        assert not (tmp_path / "big.parquet").exists()


@pytest.mark.slow
def test_sigterm_and_ctrl_c_clean_up(tmp_path):
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = _start_build(tmp_path)
        try:
            assert _wait_for(lambda: _temp_has_data(tmp_path), 60), "build never started writing"
            proc.send_signal(sig)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert proc.returncode == 130, proc.stderr.read().decode()
        assert proc.stderr.read().decode().strip().splitlines()[-1] == "wdspq: interrupted"
        assert not (tmp_path / "big.parquet").exists()
        assert not _temp_files(tmp_path)  # cleaned up


def test_shared_flags_read_the_same_in_every_command(capsys, tmp_path):
    """`--tokenizer` and `--seed` are one definition each; `info` and `show` tell an export from a table alike."""
    from wdspq.cli.common import is_export_source

    for argv in (["export"], ["verify"], ["show"], ["demo"]):
        assert main([*argv, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "--tokenizer NAME_OR_PATH Hugging Face tokenizer name or local folder (default: " in text, argv
        assert ("the export's, if it can be loaded here" in text) == (argv[0] in ("verify", "show")), argv
    for argv in (["export"], ["verify"], ["build", "synthetic"], ["build", "sim"]):
        assert main([*argv, "--help"]) == 0
        assert "--seed SEED" in capsys.readouterr().out, argv
    (tmp_path / "export").mkdir()
    for src, export in (("s3://bucket/prefix", True), (str(tmp_path / "export"), True), ("x/manifest.json", True),
                        ("table.parquet", False)):
        assert is_export_source(src) == export, src
