"""Export on Ray: byte-identical to the local engine with 1 and 2 Ray workers, after a Ray worker process
is SIGKILLed mid-export, and to S3. Ray starts a local cluster inside the test (`ray.init`)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from killing import kill_after_first_shard

import wdspq
from wdspq.build import build_synthetic

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # each Ray start-up takes seconds

SPEC = wdspq.WindowSpec(acts_length_sec=0.3, obs_length_sec=0.3, video_frame_offsets=[-1, 0], stride=3)
SPP = 25


@contextlib.contextmanager
def ray_cluster(cpus: int = 2) -> Iterator[None]:
    """A fresh local Ray cluster of `cpus` CPUs for the block (whatever ran before is shut down)."""
    ray.shutdown()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    """24 episodes: 3 spill chunks, several shards; two cameras on their own clocks."""
    out = tmp_path_factory.mktemp("ray") / "t.parquet"
    build_synthetic(out, episodes=24, seconds=1.5, image_size=8, video_size=16, cameras=["front", "wrist"],
                    camera_fps=[15, 30], seed=2, progress=False)
    return out


@pytest.fixture(scope="module")
def local(table, tokenizer_path) -> Path:
    out = table.parent / "local"
    wdspq.export_shards(table, out, SPEC, tokenizer=tokenizer_path, samples_per_shard=SPP, workers=2, progress=False)
    return out


@ray.remote(num_cpus=1)
def _pid() -> int:
    return os.getpid()


def _ray_export(table, out, tokenizer_path, **kw):
    return wdspq.export_shards(table, out, SPEC, tokenizer=tokenizer_path, samples_per_shard=SPP, engine="ray",
                               progress=False, **kw)


@pytest.mark.parametrize("cpus", [1, 2])
def test_ray_export_is_byte_identical_to_local(cpus, table, local, tokenizer_path, tmp_path):
    with ray_cluster(cpus):
        _ray_export(table, tmp_path / "ray", tokenizer_path)
        assert _files(tmp_path / "ray") == _files(local)  # every shard, index and the manifest
        assert not list((tmp_path / "ray").glob(".*"))  # no spill or staging left


def test_killed_ray_worker_is_retried_and_output_identical(table, local, tokenizer_path, tmp_path):
    with ray_cluster(2):
        pids = ray.get([_pid.remote() for _ in range(4)])  # the pool's worker processes
        killed: list[int] = []
        out = tmp_path / "ray"

        def kill_when_started():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not killed:
                if out.exists() and any(out.rglob("chunk-*")):  # spill jobs are running in the workers
                    for pid in set(pids):
                        try:
                            os.kill(pid, signal.SIGKILL)
                            killed.append(pid)
                        except ProcessLookupError:
                            pass
                time.sleep(0.01)

        t = threading.Thread(target=kill_when_started)
        t.start()
        _ray_export(table, out, tokenizer_path)
        t.join()
        assert killed, "no Ray worker process was killed"
        assert _files(out) == _files(local)


def test_ray_export_to_s3_equals_local(table, local, tokenizer_path, s3_bucket):
    from wdspq.storage import open_storage

    with ray_cluster(2):
        _ray_export(table, s3_bucket, tokenizer_path)
    st = open_storage(s3_bucket)
    assert {n: st.read_bytes(n) for n in st.list()} == _files(local)


def test_engine_errors(table, tokenizer_path, tmp_path, monkeypatch, capsys):
    with pytest.raises(wdspq.WdspqError, match="engine must be"):
        wdspq.export_shards(table, tmp_path / "x", SPEC, tokenizer=tokenizer_path, engine="slurm", progress=False)
    import builtins

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__",
                        lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name)) if name == "ray" else real(name, *a, **k))
    from wdspq.cli import main as cli_main

    assert cli_main(["export", str(table), str(tmp_path / "y"), "--engine", "ray", "--tokenizer", tokenizer_path,
                     "--no-progress"]) == 2
    assert "pip install 'wdspq[ray]'" in capsys.readouterr().err


def test_table_on_s3_exports_like_the_local_table(table, local, tokenizer_path, s3_bucket, tmp_path):
    """The table read from s3:// through the storage layer, by the local engine and by Ray tasks."""
    from wdspq.storage import open_storage

    open_storage(s3_bucket).put_bytes("tables/t.parquet", table.read_bytes())
    remote = f"{s3_bucket}/tables/t.parquet"
    assert wdspq.table.read_meta(remote).num_episodes == 24
    wdspq.export_shards(remote, tmp_path / "from-s3", SPEC, tokenizer=tokenizer_path, samples_per_shard=SPP,
                        workers=2, progress=False)
    assert _files(tmp_path / "from-s3") == _files(local)
    with ray_cluster(2):
        _ray_export(remote, tmp_path / "ray-from-s3", tokenizer_path)
    assert _files(tmp_path / "ray-from-s3") == _files(local)
    with pytest.raises(wdspq.WdspqError, match="no-such.parquet"):
        wdspq.table.read_meta(f"{s3_bucket}/tables/no-such.parquet")


DRIVER = """
import sys, time, ray, wdspq
from wdspq.storage import LocalStorage
real = LocalStorage.commit
def slow_commit(self, staging, name):  # widen the window in which the kill lands
    time.sleep(0.3)
    real(self, staging, name)
LocalStorage.commit = slow_commit
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
spec = wdspq.WindowSpec.from_dict({spec!r})
wdspq.export_shards(sys.argv[1], sys.argv[2], spec, tokenizer=sys.argv[3], samples_per_shard={spp}, engine="ray",
                    progress=False)
"""


def test_killed_ray_driver_leaves_no_manifest_and_a_rerun_completes(table, local, tokenizer_path, tmp_path):
    import sys

    out = tmp_path / "out"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(spec=SPEC.to_dict(), spp=SPP))
    rc = kill_after_first_shard([sys.executable, str(script), str(table), str(out), tokenizer_path], out)
    assert rc == -signal.SIGKILL  # the driver and the Ray processes it started
    assert not (out / "manifest.json").exists()
    for p in out.glob("shard-*.tar"):  # what is under a final name is complete
        assert (out / p.name.replace(".tar", ".idx.npy")).exists()
    with ray_cluster(2):
        _ray_export(table, out, tokenizer_path)
    assert _files(out) == _files(local)
