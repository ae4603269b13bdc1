"""The export's process pool: state installed once per worker, bounded jobs in flight, orphan exit.

Orphans: a worker closes its inherited copies of the export's lock files and dies with the export
process (Linux `PR_SET_PDEATHSIG`, elsewhere a thread watching `getppid()`), so a killed export leaves
no worker holding its lock or writing on.

Signals: a worker dies quietly on SIGTERM (default action, no traceback when a scheduler signals the
whole process group) and ignores SIGINT (Ctrl-C reaches the export process, which stops its workers).
The export process acts on SIGTERM between results (`interrupt.check`) and on any failure terminates
its workers instead of waiting for them (`close(abort=True)`): never a hang on a worker blocked on a pipe.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from typing import Any

from .. import interrupt
from .lock import close_inherited

_POLL_SEC = 0.2  # how often the export process looks at the SIGTERM flag while it waits for results
# worker processes: state is installed once per process by the pool initializer
W: dict[str, Any] = {}


_PR_SET_PDEATHSIG = 1
_WATCH_SEC = 0.5


def init_worker(state: dict[str, Any]) -> None:
    """Pool initializer: install the export's state; in a pool process also the orphan and signal rules."""
    parent = state.get("parent")
    if parent is not None:  # a pool process (not the export process itself)
        close_inherited()
        _die_with_parent(parent)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    W.clear()
    W.update(state)


def _die_with_parent(parent: int) -> None:
    """Make this worker exit when the export process `parent` dies, even while it idles or blocks."""
    armed = False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux
        pass
    if os.getppid() != parent:  # it died before the prctl
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent,), name="wdspq-watch-parent", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(_WATCH_SEC)
        if os.getppid() != parent:
            os._exit(1)


def check_parent() -> None:
    """A worker whose export process died (e.g. SIGKILL) stops instead of writing on as an orphan."""
    parent = W.get("parent")
    if parent is not None and os.getppid() != parent:
        os._exit(1)


class Workers:
    """Runs jobs in this process (`workers == 1`) or in a process pool, yielding results as they finish.

    At most `2 * workers` jobs are in flight, so job arguments are produced lazily (bounded memory).
    """

    def __init__(self, workers: int, state: dict[str, Any]) -> None:
        self.workers = workers
        self.stopped: list[int] = []  # pids of workers terminated by `close(abort=True)` (their temp files stay)
        self.pool: ProcessPoolExecutor | None = None
        if workers > 1:
            self.pool = ProcessPoolExecutor(workers, initializer=init_worker, initargs=({**state, "parent": os.getpid()},))
        else:
            init_worker({**state, "parent": None})

    def run(self, fn: Callable[[Any], Any], jobs: Iterable[Any], io_threads: int = 1) -> Iterator[Any]:
        """Results of `fn` over `jobs`, as they finish. In this process, `io_threads > 1` runs that many jobs
        at once in threads: for jobs that are mostly file I/O, hashing and fsync (which release the GIL) and
        share no unsynchronised state, such as writing shards."""
        if self.pool is None and io_threads <= 1:
            for job in jobs:
                interrupt.check()
                yield fn(job)
            return
        if self.pool is None:
            with ThreadPoolExecutor(io_threads, thread_name_prefix="wdspq-export") as threads:
                yield from _bounded(threads, fn, jobs, 2 * io_threads)
            return
        yield from _bounded(self.pool, fn, jobs, 2 * self.workers)

    def close(self, abort: bool = False) -> None:
        """Wait for the workers to finish; with `abort` (a failure or SIGTERM), terminate them at once."""
        if self.pool is not None:
            if abort:
                procs = list((getattr(self.pool, "_processes", None) or {}).values())
                self.pool.shutdown(wait=False, cancel_futures=True)
                for p in procs:
                    if p.is_alive():
                        p.terminate()
                for p in procs:
                    p.join(10)
                    if p.is_alive():
                        p.kill()
                        p.join()
                self.stopped = [p.pid for p in procs if p.pid is not None]
            else:
                self.pool.shutdown(wait=True, cancel_futures=True)
        W.clear()


def _bounded(executor: Executor, fn: Callable[[Any], Any], jobs: Iterable[Any], in_flight: int) -> Iterator[Any]:
    """Submit jobs lazily, at most `in_flight` at a time; yield results in completion order."""
    it = iter(jobs)
    running: set[Future] = set()
    for job in it:
        running.add(executor.submit(fn, job))
        if len(running) >= in_flight:
            break
    while running:
        done, running = wait(running, timeout=_POLL_SEC, return_when=FIRST_COMPLETED)
        interrupt.check()
        for fut in done:
            try:
                result = fut.result()
            except BaseException:
                interrupt.check()  # a worker stopped by the same SIGTERM: report the interruption
                raise
            yield result
            nxt = next(it, None)
            if nxt is not None:
                running.add(executor.submit(fn, nxt))
