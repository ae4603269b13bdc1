"""Interrupted export: real SIGKILLs of `wdspq export` at seeded random points, re-run each time.

After every kill: no manifest, and every shard under its final name parses completely and has the
sha256 the exporter recorded for it (its journal line, and the uninterrupted export's manifest: the
output is byte-deterministic). The run that completes produces output byte-identical to an
uninterrupted export, with no staging or spill files left. (A killed `wdspq build` leaving no table is
tested in tests/test_cli.py::test_sigkill_leaves_no_table.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from wdspq.shardfmt.tuning import DICTIONARY_NAME as DICTIONARY

REPO = Path(__file__).resolve().parents[1]
KILLS = 5
SPS = 40
SPEC_ARGS = ["--acts-length-sec", "0.1", "--obs-length-sec", "0.1", "--stride", "2", "--max-text-tokens", "8"]

pytestmark = pytest.mark.slow


def _has_export_command() -> bool:
    from wdspq import cli

    sub = next(a for a in cli.make_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return "export" in sub.choices


_DRIVER = """
import sys
from wdspq import WindowSpec, export_shards
table, out, tok = sys.argv[1:4]
spec = WindowSpec(acts_length_sec=0.1, obs_length_sec=0.1, stride=2, max_text_tokens=8)
export_shards(table, out, spec, tokenizer=tok, samples_per_shard=int(sys.argv[4]), seed=0, progress=False)
"""


def _start(table: Path, out: Path, tokenizer: str) -> subprocess.Popen:
    """`wdspq export` in its own process group (the export and any workers), or the same call via the API."""
    if _has_export_command():
        cmd = [sys.executable, "-m", "wdspq", "export", str(table), str(out), *SPEC_ARGS, "--tokenizer", tokenizer,
               "--samples-per-shard", str(SPS), "--seed", "0", "--no-progress"]  # fmt: skip
    else:  # the CLI command is not there yet: the same export through the library
        cmd = [sys.executable, "-c", _DRIVER, str(table), str(out), tokenizer, str(SPS)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _final_shards(out: Path) -> list[Path]:
    return sorted(out.glob("shard-*.tar"))


def _spill_chunks(out: Path) -> int:
    return len(list(out.glob(".wdspq-spill-*/chunk-*"))) if out.exists() else 0


def _journal(out: Path) -> dict[str, dict]:
    entries: dict[str, dict] = {}
    for path in out.glob(".wdspq-spill-*/journal.jsonl"):
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by the kill
            entries[rec["entry"]["name"]] = rec["entry"]
    return entries


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_after_kill(out: Path, ref: dict[str, dict], ref_dir: Path) -> int:
    """No manifest; every final-named shard complete and matching its recorded sha256. Returns #shards."""
    assert not (out / "manifest.json").exists(), "a manifest appeared before the export completed"
    visible = {p.name for p in out.iterdir() if not p.name.startswith(".")} if out.exists() else set()
    shards = _final_shards(out)
    indexes = {p.name for p in shards} and {p.name.replace(".tar", ".idx.npy") for p in shards}
    assert indexes <= visible, "a committed shard without its index sidecar"
    # the dictionary is committed (atomically) just before the manifest: a kill between the two leaves it, whole
    if DICTIONARY in visible:
        assert (out / DICTIONARY).read_bytes() == (ref_dir / DICTIONARY).read_bytes(), "a dictionary cut or different"
        assert len(shards) == len(ref), "the dictionary was committed before every shard"
    # besides shards, their indexes and the dictionary only an index committed just before the kill hit its shard
    rest = visible - indexes - {p.name for p in shards} - {DICTIONARY}
    assert {n for n in rest if not n.endswith(".idx.npy")} == set(), visible
    journal = _journal(out)
    for p in shards:
        with tarfile.open(p) as tf:  # parses to the end
            members = tf.getmembers()
            for m in members:
                assert len(tf.extractfile(m).read()) == m.size
        sha = _sha(p)
        samples = [m for m in members if not m.name.startswith("frames-")]  # shared frames: packs besides samples
        assert len(samples) == ref[p.name]["samples"], p.name
        assert sha == ref[p.name]["sha256"], f"{p.name} differs from the uninterrupted export"
        if p.name in journal:
            assert sha == journal[p.name]["sha256"] and p.stat().st_size == journal[p.name]["bytes"]
    return len(shards)


def _wait(pred, proc: subprocess.Popen, timeout: float = 60.0) -> bool:
    """Poll until pred() (True) or the process exits (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError("the export made no progress within the time limit")


def test_export_killed_at_random_points_completes_identically(tmp_path, tokenizer_path):
    from wdspq.build import build_synthetic

    table = tmp_path / "t.parquet"
    build_synthetic(table, episodes=24, seconds=2.0, image_size=8, video_size=16, seed=2, progress=False)
    ref_dir, out = tmp_path / "ref", tmp_path / "out"
    proc = _start(table, ref_dir, tokenizer_path)
    assert proc.wait(120) == 0, proc.stderr.read().decode()
    ref_manifest = json.loads((ref_dir / "manifest.json").read_text())
    ref = {e["name"]: e for e in ref_manifest["shards"]}
    n_shards = len(ref)
    assert n_shards >= 4 * KILLS

    rng = random.Random(8)
    kills = 0
    for i in range(KILLS):
        proc = _start(table, out, tokenizer_path)
        try:
            have = len(_final_shards(out))
            if i == 0 or rng.random() < 0.25:  # during the spill phase (or its reuse), before new shards
                chunks = _spill_chunks(out)
                reached = _wait(lambda c=chunks, h=have: _spill_chunks(out) > c or len(_final_shards(out)) > h, proc)
            else:  # during the assemble phase, after a random number of new shards
                goal = have + rng.randint(1, max(1, (n_shards - have) // (KILLS - i + 1)))
                reached = _wait(lambda g=goal: len(_final_shards(out)) >= g, proc)
            time.sleep(rng.uniform(0, 0.02))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        if proc.returncode != -signal.SIGKILL:  # it finished first: nothing more to interrupt
            assert proc.returncode == 0 and not reached, proc.stderr.read().decode()
            break
        kills += 1
        print(f"kill {kills}: {_spill_chunks(out)} spill files, {_check_after_kill(out, ref, ref_dir)} of {n_shards} shards")
    assert kills >= KILLS - 1, f"only {kills} kills landed before the export finished"

    proc = _start(table, out, tokenizer_path)
    assert proc.wait(120) == 0, proc.stderr.read().decode()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref_dir.iterdir())  # nothing hidden left
    for p in ref_dir.iterdir():
        assert (out / p.name).read_bytes() == p.read_bytes(), f"{p.name} differs from the uninterrupted export"
