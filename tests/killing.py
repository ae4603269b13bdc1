"""Killing an export mid-way for the restart tests (not collected by pytest)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path


def kill_after_first_shard(argv: Sequence[str], out: Path, timeout: float = 120.0) -> int:
    """Run `argv` in its own session and SIGKILL its whole process group (workers, a Ray cluster it
    started) as soon as a shard appears under its final name in `out`; returns the exit code."""
    proc = subprocess.Popen(list(argv), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while not list(Path(out).glob("shard-*.tar")):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no shard was committed in time"
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    return proc.returncode
