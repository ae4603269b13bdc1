"""Export under real faults: two writers into one output (local and S3), stale locks, a re-run of a
finished export (docs/reliability.md). Exports run as `wdspq export` processes; a running export is held
still with SIGSTOP where the test needs it to be mid-way, so no timing decides the outcome."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wdspq.verify import verify_shards

REPO = Path(__file__).resolve().parents[1]
SPEC_ARGS = ["--acts-length-sec", "0.1", "--obs-length-sec", "0.1", "--stride", "2", "--max-text-tokens", "8",
             "--samples-per-shard", "40", "--compression", "none", "--no-progress"]


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    from wdspq.build import build_synthetic

    path = tmp_path_factory.mktemp("rel") / "t.parquet"
    build_synthetic(path, episodes=24, seconds=2.0, image_size=8, video_size=16, seed=2, progress=False)
    return path


def cli(table: Path, out: str, tok: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "wdspq", "export", str(table), out, *SPEC_ARGS, "--tokenizer", tok, *extra]


def run(argv: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def start(argv: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": str(REPO), **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(pred, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert proc.poll() is None, f"the export ended first: {proc.communicate()}"
        assert time.monotonic() < end, "the export made no progress"
        time.sleep(0.01)


def concurrent_exports(table: Path, out: str, tok: str, spilled, second: list[str], **env: str):
    """Export A runs; once it is spilling (`spilled()`), it is stopped and export B (A's command plus
    `second`) runs to the end; then A continues. Returns (A, B) as (returncode, stdout, stderr)."""
    a = start(cli(table, out, tok), **env)
    try:
        wait_for(spilled, a)
        os.kill(a.pid, signal.SIGSTOP)
        try:
            b = run(cli(table, out, tok, *second))
        finally:
            os.kill(a.pid, signal.SIGCONT)
        out_a, err_a = a.communicate(timeout=180)
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
            a.wait()
    return (a.returncode, out_a, err_a, a.pid), (b.returncode, b.stdout, b.stderr)


def assert_refused(b, pid: int) -> None:
    rc, out, err = b
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"pid {pid}," in lines[0] and f"host {socket.gethostname()}" in lines[0] and "since" in lines[0], lines[0]
    assert "another export" in lines[0] and out == ""


@pytest.mark.parametrize("second", [["--seed", "1"], []], ids=["other-config", "same-config"])
def test_two_exports_into_one_folder_one_refuses_the_other_verifies(table, tokenizer_path, tmp_path, second):
    out = tmp_path / "o"
    a, b = concurrent_exports(table, str(out), tokenizer_path, lambda: any(out.glob(".wdspq-spill-*/chunk-*.bin")),
                              second)
    assert_refused(b, a[3])
    assert a[0] == 0 and a[1].startswith("wrote "), a
    report = verify_shards(str(out), progress=False)
    assert report.ok, report.problems
    assert json.loads((out / "manifest.json").read_text())["seed"] == 0
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # lock and spill removed


def test_two_exports_into_one_s3_prefix_one_refuses_the_other_verifies(table, tokenizer_path, tmp_path, s3_bucket):
    spill = tmp_path / "tmp"
    spill.mkdir()
    a, b = concurrent_exports(table, s3_bucket, tokenizer_path, lambda: any(spill.glob("wdspq-spill-*/chunk-*.bin")),
                              ["--seed", "1"], TMPDIR=str(spill))
    assert_refused(b, a[3])
    assert a[0] == 0, a
    report = verify_shards(s3_bucket, progress=False)
    assert report.ok, report.problems
    from wdspq.storage import open_storage

    assert ".wdspq-lock" not in open_storage(s3_bucket).list("")  # released


def test_two_s3_exports_of_one_configuration_to_different_prefixes_both_finish(table, tokenizer_path, tmp_path,
                                                                              s3_bucket):
    """Their default spill folders (in $TMPDIR) differ by the output URL, so neither refuses the other."""
    spill = tmp_path / "tmp"
    spill.mkdir()
    other = s3_bucket.rsplit("/", 1)[0] + "/other"
    a = start(cli(table, s3_bucket, tokenizer_path), TMPDIR=str(spill))
    try:
        wait_for(lambda: any(spill.glob("wdspq-spill-*/chunk-*.bin")), a)
        os.kill(a.pid, signal.SIGSTOP)
        try:
            b = subprocess.run(cli(table, other, tokenizer_path), env={**os.environ, "PYTHONPATH": str(REPO),
                               "TMPDIR": str(spill)}, capture_output=True, text=True, timeout=180)
        finally:
            os.kill(a.pid, signal.SIGCONT)
        _, err_a = a.communicate(timeout=180)
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
            a.wait()
    assert b.returncode == 0, b.stderr
    assert a.returncode == 0, err_a
    assert verify_shards(other, progress=False).ok and verify_shards(s3_bucket, progress=False).ok


def test_lock_of_a_killed_export_is_taken_over(table, tokenizer_path, tmp_path):
    out = tmp_path / "o"
    a = start(cli(table, str(out), tokenizer_path))
    wait_for(lambda: any(out.glob(".wdspq-spill-*/chunk-*.bin")), a)
    os.killpg(a.pid, signal.SIGKILL)
    a.wait()
    assert (out / ".wdspq-lock").exists()  # left behind, but no longer held
    done = run(cli(table, str(out), tokenizer_path))
    assert done.returncode == 0, done.stderr
    assert verify_shards(str(out), progress=False).ok


def test_killed_export_process_leaves_no_worker_holding_its_lock(table, tokenizer_path, tmp_path):
    """SIGKILL to the export process alone (not its group): its workers close their inherited copy of the
    lock file and die with it, so a re-run gets the output within a few seconds."""
    out = tmp_path / "o"
    a = start(cli(table, str(out), tokenizer_path, "--workers", "2"))
    try:
        wait_for(lambda: any(out.glob(".wdspq-spill-*/chunk-*")), a)  # the workers are running
        os.kill(a.pid, signal.SIGKILL)
        a.wait()
        end = time.monotonic() + 30
        while True:
            done = run(cli(table, str(out), tokenizer_path))
            if done.returncode == 0 or time.monotonic() > end:
                break
            time.sleep(0.5)
        assert done.returncode == 0, done.stderr
        assert verify_shards(str(out), progress=False).ok
        assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    finally:
        try:
            os.killpg(a.pid, signal.SIGKILL)  # reap any worker left behind
        except ProcessLookupError:
            pass


def test_a_forked_worker_closing_its_lock_copy_keeps_the_parent_lock(tmp_path):
    from wdspq.export.lock import LocalLock, LockError, close_inherited

    lock = LocalLock(tmp_path)
    lock.acquire()
    pid = os.fork()
    if pid == 0:  # what a pool worker does at start
        close_inherited()
        os._exit(0)
    os.waitpid(pid, 0)
    with pytest.raises(LockError, match=f"pid {os.getpid()},"):
        LocalLock(tmp_path).acquire()
    lock.release()
    LocalLock(tmp_path).acquire()


def test_lock_held_for_a_dead_export_process_says_so(tmp_path):
    import fcntl

    from wdspq.export.lock import LocalLock, LockError

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    fd = os.open(tmp_path / ".wdspq-lock", os.O_RDWR | os.O_CREAT)  # held by a leftover process of that export
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        from wdspq.export.lock import _pid_space

        info = {"host": socket.gethostname(), "pid": int(dead.stdout), **_pid_space(),
                "started": "2026-01-01 00:00:00 UTC"}
        os.write(fd, json.dumps(info).encode())
        with pytest.raises(LockError, match="is no longer running, but its lock .* still held by a process it left"):
            LocalLock(tmp_path).acquire()
    finally:
        os.close(fd)


def test_sigterm_to_a_two_worker_export_removes_the_partial_files_of_its_workers(table, tokenizer_path, tmp_path):
    """A worker caught mid-write (held still with SIGSTOP) when the export process gets SIGTERM: the export
    process terminates it and removes its partial spill file."""
    out = tmp_path / "o"
    a = start(cli(table, str(out), tokenizer_path, "--workers", "2"))
    try:
        caught = None
        end = time.monotonic() + 120
        while caught is None:
            assert a.poll() is None and time.monotonic() < end, "no partial spill file seen"
            for p in out.glob(".wdspq-spill-*/chunk-*.bin.tmp-*"):
                pid = int(p.name.rsplit("-", 1)[1])
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    continue
                if p.exists():
                    caught = p
                    break
                os.kill(pid, signal.SIGCONT)  # it had finished that file: try again
        os.kill(a.pid, signal.SIGTERM)
        _, err = a.communicate(timeout=60)
        assert a.returncode == 130, err
        assert not caught.exists() and list(out.glob(".wdspq-spill-*/*.tmp-*")) == []
    finally:
        try:
            os.killpg(a.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


_AFTER_MAIN = """
import os, signal, sys, time
from wdspq import cli
sys.argv = ["wdspq", "--version"]
if "{where}" == "finally":  # lands in main()'s clean-up, after the command finished
    setitimer = signal.setitimer
    def hook(*a):
        os.kill(os.getpid(), signal.SIGTERM)
        return setitimer(*a)
    signal.setitimer = hook
code = cli.main()
if "{where}" == "after":  # after main() returned, while the program shuts down
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
sys.exit(code)
"""


@pytest.mark.parametrize("where", ["finally", "after"])
def test_sigterm_after_the_command_finished_keeps_its_exit_code(where):
    done = run([sys.executable, "-c", _AFTER_MAIN.format(where=where)], timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("wdspq "), (done.returncode, done.stderr)


def _put_lock(s3_url: str, info: dict) -> None:
    from wdspq.storage import open_storage

    open_storage(s3_url).put_bytes(".wdspq-lock", json.dumps(info).encode())


def test_s3_lock_fresh_refuses_stale_is_taken_over(table, tokenizer_path, s3_bucket, tmp_path, monkeypatch):
    from wdspq.export.lock import LockError, S3Lock
    from wdspq.storage import open_storage

    storage = open_storage(s3_bucket)
    now = time.time()
    _put_lock(s3_bucket, {"host": "elsewhere", "pid": 4242, "started": "2026-01-01 00:00:00 UTC", "heartbeat_unix": now})
    with pytest.raises(LockError, match=r"host elsewhere, pid 4242, since 2026-01-01 00:00:00 UTC"):
        S3Lock(storage).acquire()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that is not running on this host
    from wdspq.export.lock import _pid_space

    other_ns = {**_pid_space(), "pid_ns": "pid:[1]"}  # a container sharing this host name: its pids are not ours
    _put_lock(s3_bucket, {"host": socket.gethostname(), "pid": dead.pid, **other_ns, "heartbeat_unix": now})
    with pytest.raises(LockError, match=f"pid {dead.pid},"):
        S3Lock(storage).acquire()
    _put_lock(s3_bucket, {"host": socket.gethostname(), "pid": dead.pid, "heartbeat_unix": now})
    with pytest.raises(LockError, match=f"pid {dead.pid},"):  # no pid space recorded: judged by its lease only
        S3Lock(storage).acquire()
    _put_lock(s3_bucket, {"host": socket.gethostname(), "pid": dead.pid, **_pid_space(), "heartbeat_unix": now})
    lock = S3Lock(storage)
    lock.acquire()  # the holder died: taken over
    with pytest.raises(LockError, match=f"pid {os.getpid()},"):
        S3Lock(storage).acquire()  # ours is fresh: a second writer is refused
    lock.release()
    assert ".wdspq-lock" not in storage.list("")
    monkeypatch.setenv("WDSPQ_LOCK_LEASE_SEC", "1")
    _put_lock(s3_bucket, {"host": "elsewhere", "pid": 4242, "heartbeat_unix": now - 60})
    time.sleep(1.1)  # the server's LastModified of the lock object also ages past the lease
    lock = S3Lock(storage)
    lock.acquire()  # not refreshed within its lease: taken over
    lock.release()


def test_s3_lock_lost_to_a_takeover_stops_the_holder(s3_bucket, monkeypatch):
    from wdspq.export.lock import LockError, S3Lock
    from wdspq.storage import open_storage

    storage = open_storage(s3_bucket)
    lock = S3Lock(storage)
    lock.acquire()
    lock._stop.set()  # a holder that stopped refreshing (e.g. suspended)
    lock._thread.join()
    _put_lock(s3_bucket, {"host": "elsewhere", "pid": 4242, "heartbeat_unix": time.time()})  # taken over
    lock._stop.clear()
    lock.lease = 0.2
    lock._beat()
    with pytest.raises(LockError, match="lost its lock"):
        lock.check()
    lock.release()
    assert ".wdspq-lock" in storage.list("")  # the new holder's lock is left alone


def test_s3_lock_heartbeat_that_cannot_read_the_new_holder_still_marks_the_lock_lost(s3_bucket):
    from botocore.exceptions import ClientError

    from wdspq.errors import StorageError
    from wdspq.export.lock import LockError, S3Lock
    from wdspq.storage import open_storage

    lock = S3Lock(open_storage(s3_bucket))
    lock.acquire()
    lock._stop.set()
    lock._thread.join()
    lock._stop.clear()
    lock.lease = 0.2

    def taken_over(**cond):
        raise ClientError({"Error": {"Code": "PreconditionFailed"}, "ResponseMetadata": {"HTTPStatusCode": 412}},
                          "PutObject")

    def unreadable():
        raise StorageError(f"{s3_bucket}/.wdspq-lock: cannot read the export lock: timed out")

    lock._put, lock._held = taken_over, unreadable
    lock._beat()  # returns (the heartbeat thread does not die with an exception)
    with pytest.raises(LockError, match="lost its lock"):
        lock.check()


def test_s3_export_whose_lock_is_taken_over_stops_committing_shards(table, tokenizer_path, s3_bucket, monkeypatch,
                                                                     tmp_path):
    import wdspq
    from wdspq.export import exporter as local
    from wdspq.export.lock import LockError, S3Lock
    from wdspq.storage import open_storage

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    held: list[S3Lock] = []
    acquire, assemble = S3Lock.acquire, local.assemble_shard

    def acquire_and_keep(self):
        acquire(self)
        held.append(self)

    def assemble_then_lose(job):
        entry = assemble(job)
        held[0].lost = "another export (host elsewhere, pid 4242, since now) is writing this export"  # taken over
        return entry

    monkeypatch.setattr(S3Lock, "acquire", acquire_and_keep)
    monkeypatch.setattr(local, "assemble_shard", assemble_then_lose)
    spec = wdspq.WindowSpec(obs_length_sec=0.1, acts_length_sec=0.1, stride=2, max_text_tokens=8)
    with pytest.raises(LockError, match="lost its lock"):
        wdspq.export_shards(table, s3_bucket, spec, tokenizer=tokenizer_path, samples_per_shard=10, progress=False,
                            encoding={"compression": "none"})
    total = len(local.shard_assignment(len(wdspq.ParquetWindowDataset(table, spec, tokenizer=tokenizer_path)), 10, 0,
                                       True))
    committed = [n for n in open_storage(s3_bucket).list("shard-") if n.endswith(".tar")]
    assert total >= 20 and len(committed) <= 5, (len(committed), total)  # only the jobs already in flight


def test_rerun_of_a_finished_export_says_already_complete(table, tokenizer_path, tmp_path):
    out = tmp_path / "o"
    first = run(cli(table, str(out), tokenizer_path))
    assert first.returncode == 0 and first.stdout.startswith("wrote "), first.stderr
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run(cli(table, str(out), tokenizer_path))  # --no-progress: the outcome is still said
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("already complete: ") and "wrote" not in again.stdout, again.stdout
    assert again.stderr == ""
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_rerun_into_a_read_only_finished_export(table, tokenizer_path, tmp_path):
    out, ro = tmp_path / "o", tmp_path / "ro"
    assert run(cli(table, str(out), tokenizer_path)).returncode == 0
    ro.mkdir()
    if os.geteuid() != 0:
        out.chmod(0o555)
        target = out
    else:  # root writes through permissions: a read-only bind mount instead
        if subprocess.run(["mount", "--bind", str(out), str(ro)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a read-only folder (root, and bind mounts are not permitted)")
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        target = ro
    try:
        again = run(cli(table, str(target), tokenizer_path))
        assert again.returncode == 0, again.stderr
        assert again.stdout.startswith("already complete: "), again.stdout
        other = run(cli(table, str(target), tokenizer_path, "--seed", "1", "--overwrite"))
        assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1, other.stderr
        assert str(target) in other.stderr
    finally:
        if target is ro:
            subprocess.run(["umount", str(ro)], check=True)
        else:
            out.chmod(0o755)


# -- a full disk ------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs (root only); `small_disk.grow()` frees space by enlarging it to 64 MiB."""
    disk = tmp_path / "disk"
    disk.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {res.stderr.strip()}")

    class Disk(type(disk)):  # a Path with a grow() method
        def grow(self) -> None:
            subprocess.run(["mount", "-o", "remount,size=64m", str(self)], check=True)

    try:
        yield Disk(disk)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.fixture(scope="module")
def big_table(tmp_path_factory) -> Path:
    """About 15 MiB of uncompressed windows: more than the small disk holds."""
    from wdspq.build import build_synthetic

    path = tmp_path_factory.mktemp("rel") / "big.parquet"
    build_synthetic(path, episodes=48, seconds=2.0, image_size=8, video_size=16, seed=2, progress=False)
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if ".tmp-" in p.name or "staging" in p.name)


def test_disk_full_names_the_path_leaves_nothing_partial_and_the_rerun_checks_space(big_table, tokenizer_path,
                                                                                   small_disk):
    out = small_disk / "o"
    full = run(cli(big_table, str(out), tokenizer_path, "--force"))
    assert full.returncode == 2, full
    line = full.stderr.strip()
    assert len(line.splitlines()) == 1 and "No space left on device" in line, line
    assert f"{out}/" in line and "cannot write" in line, line  # the file it could not write
    assert _leftovers(small_disk) == []  # no partial spill or shard file keeps the disk full
    again = run(cli(big_table, str(out), tokenizer_path))  # the spill folder exists: still checked
    assert again.returncode == 2 and "not enough space" in again.stderr, again.stderr
    small_disk.grow()
    done = run(cli(big_table, str(out), tokenizer_path))
    assert done.returncode == 0, done.stderr
    assert verify_shards(str(out), progress=False).ok
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_disk_full_in_a_given_spill_dir_leaves_no_partial_file(big_table, tokenizer_path, small_disk, tmp_path):
    out, spill = tmp_path / "o", small_disk / "spill"
    full = run(cli(big_table, str(out), tokenizer_path, "--force", "--spill-dir", str(spill)))
    assert full.returncode == 2 and f"{spill}/" in full.stderr and "No space left" in full.stderr, full.stderr
    assert _leftovers(small_disk) == []
    small_disk.grow()
    done = run(cli(big_table, str(out), tokenizer_path, "--spill-dir", str(spill)))
    assert done.returncode == 0, done.stderr
    assert _leftovers(small_disk) == [] and not (spill / ".wdspq-lock").exists()
    assert verify_shards(str(out), progress=False).ok


def test_disk_full_injected_names_the_path_and_leaves_nothing_partial(table, tokenizer_path, tmp_path, monkeypatch):
    """The same without a tmpfs: ENOSPC injected into the spill writes (and into a shard's staging file)."""
    import errno

    import wdspq.export.phases as phases
    from wdspq import WdspqError, WindowSpec, export_shards

    spec = WindowSpec(acts_length_sec=0.1, obs_length_sec=0.1, stride=2, max_text_tokens=8)
    kw = dict(tokenizer=tokenizer_path, samples_per_shard=40, progress=False)
    out = tmp_path / "o"
    real_write, calls = phases._write, [0]

    class Full:
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")  # as a full disk does: no file named

    def full_write(f, data, path):
        calls[0] += 1
        real_write(Full() if calls[0] > 50 else f, data, path)

    monkeypatch.setattr(phases, "_write", full_write)
    with pytest.raises(WdspqError, match=r"/chunk-\d{6}\.bin: cannot write the spill file: No space left on device"):
        export_shards(table, out, spec, **kw)
    assert _leftovers(out) == []
    monkeypatch.undo()
    export_shards(table, out, spec, **kw)
    assert verify_shards(str(out), progress=False).ok and _leftovers(out) == []


# -- an export rewritten under a running stream -----------------------------------------------------


def _samples(batch: dict) -> list[tuple[int, str]]:
    """(window_index, digest of every tensor's row) of each sample of a batch."""
    import hashlib

    keys = sorted(k for k, v in batch.items() if hasattr(v, "shape"))
    out = []
    for i in range(len(batch["window_index"])):
        h = hashlib.sha256()
        for k in keys:
            h.update(k.encode() + batch[k][i].contiguous().numpy().tobytes())
        out.append((int(batch["window_index"][i]), h.hexdigest()))
    return out


@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.slow)])
@pytest.mark.parametrize("change", [["--seed", "1"], pytest.param(["--obs-offset-sec", "-0.05"], marks=pytest.mark.slow)],
                         ids=["seed", "obs-offset"])
def test_overwrite_under_a_running_stream_never_mixes_two_exports(table, tokenizer_path, tmp_path, change, num_workers):
    overwrite_under_a_stream(table, tokenizer_path, str(tmp_path / "o"), change, num_workers)


def test_overwrite_under_a_running_s3_stream_never_mixes_two_exports(table, tokenizer_path, s3_bucket):
    overwrite_under_a_stream(table, tokenizer_path, s3_bucket, ["--seed", "1"], 0)


def overwrite_under_a_stream(table: Path, tokenizer_path: str, out: str, change: list[str], num_workers: int) -> None:
    """Stream an epoch, pause after 50 batches, overwrite the export, go on: the samples delivered are a
    prefix of the old export's epoch (or all of it), never a sample of the new one, or twice."""
    from wdspq import ShardStream, StreamLoader
    from wdspq.errors import ExportChangedError

    assert run(cli(table, out, tokenizer_path)).returncode == 0
    ref_loader = StreamLoader(ShardStream(out, seed=3), batch_size=8, num_workers=num_workers)
    reference = [s for b in ref_loader for s in _samples(b)]  # the epoch's order depends on the topology
    assert len({w for w, _ in reference}) == len(reference)  # one epoch: every window once
    loader = StreamLoader(ShardStream(out, seed=3), batch_size=8, num_workers=num_workers)
    it = iter(loader)
    got = [s for _ in range(50) for s in _samples(next(it))]  # paused after 50 batches
    over = run(cli(table, str(out), tokenizer_path, *change, "--overwrite"))
    assert over.returncode == 0, over.stderr
    error = None
    try:
        for b in it:
            got += _samples(b)
    except ExportChangedError as e:
        error = str(e)
    windows = [w for w, _ in got]
    assert len(set(windows)) == len(windows), f"{len(windows) - len(set(windows))} windows delivered twice"
    assert got == reference[: len(got)], "samples of the new export were delivered in the old export's epoch"
    if error is None:
        assert len(got) == len(reference)  # finished on the old export
    else:
        assert f"{out}/manifest.json" in error and "changed while it was being read" in error, error
        assert "stopped before shard shard-" in error  # (from a DataLoader worker torch adds its traceback)


# -- SIGTERM ----------------------------------------------------------------------------------------


def test_sigterm_landing_in_a_finalizer_still_stops_the_export(monkeypatch, capsys, tmp_path):
    """A SIGTERM whose handler runs inside a finalizer (`__del__`: Python prints and swallows what it
    raises) must still stop the command: exit code 130 and one line, not a success."""
    import wdspq.export as ex
    from wdspq.cli import main as cli_main

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before this frame returns

    def export_shards(*a, **k):
        Finalized()  # collected at once: the signal lands in its __del__
        time.sleep(0.5)  # the export goes on working
        return {"num_windows": 1, "shards": [{"bytes": 1}]}

    monkeypatch.setattr(ex, "export_shards", export_shards)
    rc = cli_main(["export", str(tmp_path / "t.parquet"), str(tmp_path / "o"), "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 130, captured
    assert captured.err.splitlines() == [
        "wdspq: interrupted; re-run the same command to resume (committed shards are kept)"], captured.err
    assert "wrote" not in captured.out


def test_sigterm_after_the_manifest_commit_keeps_the_outcome_and_cleans_up(table, tokenizer_path, tmp_path,
                                                                          monkeypatch, capsys):
    """The manifest decides the outcome: a SIGTERM that lands just after its commit lets the clean-up finish
    (no spill folder, staging file or lock left: a re-run that finds the export complete writes nothing, so
    it would never remove them) and `wdspq export` reports the export it wrote, exit 0."""
    from wdspq import interrupt
    from wdspq.cli import main as cli_main
    from wdspq.storage.local import LocalStorage

    real = LocalStorage.put_bytes

    def put_then_signal(self, name, data):
        real(self, name, data)
        if name == "manifest.json":
            os.kill(os.getpid(), signal.SIGTERM)  # its handler runs before the next line of the export

    monkeypatch.setattr(LocalStorage, "put_bytes", put_then_signal)
    out = tmp_path / "o"
    rc = cli_main(["export", str(table), str(out), *SPEC_ARGS, "--tokenizer", tokenizer_path])
    captured = capsys.readouterr()
    assert interrupt.requested() is False
    assert rc == 0 and captured.out.startswith("wrote ") and captured.err == "", captured
    assert (out / "manifest.json").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # spill, staging and lock removed
    assert verify_shards(str(out)).ok


_IDLE_WORKERS = """
import os, signal, sys, time
from wdspq.cli import app as cli
from wdspq.export.pool import Workers
signal.signal(signal.SIGTERM, cli._on_sigterm)  # as under `wdspq export`
pool = Workers(2, {})
assert sorted(pool.run(abs, [-1, -2, -3, -4])) == [1, 2, 3, 4]  # the workers are up, now idle
for p in list(pool.pool._processes.values()):
    try:
        os.kill(p.pid, signal.SIGTERM)  # what a scheduler's SIGTERM to the process group does to them
    except ProcessLookupError:  # the executor saw the first one die and already ended the other
        pass
    p.join(30)
print("workers gone", flush=True)
os._exit(0)
"""


def test_sigterm_to_idle_workers_prints_no_traceback():
    res = run([sys.executable, "-c", _IDLE_WORKERS], timeout=120)
    assert res.stdout == "workers gone\n", res
    assert res.stderr == "", res.stderr  # no "Process ForkProcess-1: Traceback ..." per worker


_BUSY_WORKERS = """
import time
from wdspq.export.pool import Workers
pool = Workers(2, {})
try:
    for _ in pool.run(time.sleep, [0, 600, 600, 600]):
        raise KeyboardInterrupt  # the export stops (a signal, an error) while two jobs still run
except KeyboardInterrupt:
    pool.close(abort=True)  # terminates them: no waiting on a job, or on a worker blocked on a pipe
print("closed", flush=True)
"""


def test_an_aborted_pool_does_not_wait_for_running_jobs():
    res = run([sys.executable, "-c", _BUSY_WORKERS], timeout=120)  # the jobs would take 10 minutes
    assert res.returncode == 0 and res.stdout == "closed\n" and res.stderr == "", res


@pytest.mark.parametrize("signalled", [True, False])
def test_a_broken_worker_pool_is_one_line_and_counts_as_interrupted_after_sigterm(monkeypatch, capsys, signalled):
    """A SIGTERM sent to the whole group can kill a pool worker before the export process acts on its own
    SIGTERM: the pool breaks first. That is the one-line "interrupted" exit (130), never a traceback; a
    worker that died without a SIGTERM is a one-line error (2)."""
    from concurrent.futures.process import BrokenProcessPool

    from wdspq import interrupt
    from wdspq.cli import app

    def broken(_args):
        if signalled:
            interrupt._requested.set()  # what the SIGTERM handler records
        raise BrokenProcessPool("A child process terminated abruptly")

    def register(sub):
        sub.add_parser("boom").set_defaults(func=broken)

    monkeypatch.setattr(app, "COMMANDS", [*app.COMMANDS, register])
    try:
        code = app._run(["boom"], False, "")
    finally:
        interrupt.reset()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    if signalled:
        assert code == 130 and err[0].startswith("wdspq: interrupted")
    else:
        assert code == 2 and "worker process died" in err[0]
