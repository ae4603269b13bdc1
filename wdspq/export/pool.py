"""The export's local engine: a process pool with the job state installed once per worker
(`JOB_STATE`), bounded jobs in flight (`bounded_results`, shared with the Ray engine), orphan exit.

Orphans: a worker closes its inherited copies of the export's lock files and dies with the export
process (Linux `PR_SET_PDEATHSIG`, elsewhere a thread watching `getppid()`), so a killed export leaves
no worker holding its lock or writing on.

Signals: a worker dies quietly on SIGTERM (default action, no traceback when a scheduler signals the
whole process group) and ignores SIGINT (Ctrl-C reaches the export process, which stops its workers).
The export process acts on SIGTERM between results (`interrupt.check`) and on any failure terminates
its workers instead of waiting for them (`close(abort=True)`): never a hang on a worker blocked on a pipe.
A pool broken by a SIGTERM sent to the whole process group (its workers died first) is reported as that
interruption, once the export process has seen its own SIGTERM; otherwise the `BrokenExecutor` is raised.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import (
    FIRST_COMPLETED,
    BrokenExecutor,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from .. import interrupt
from .lock import close_inherited

_POLL_SEC = 0.2  # how often the export process looks at the SIGTERM flag while it waits for results
_SIGTERM_GRACE_SEC = 1.0  # our own SIGTERM may land a moment after the pool noticed its workers died
_PR_SET_PDEATHSIG = 1
_WATCH_SEC = 0.5
H = TypeVar("H")


@dataclass
class WorkerState:
    """What the export's jobs read in a worker process, installed once per process (`init_worker`)."""

    ds: Any = None  # the episode source the spill jobs cut windows from
    spill_root: str = ""  # the local spill folder
    storage: Any = None  # where the shards are committed
    codec: Any = None  # the tuned SampleCodec
    parent: int | None = None  # the export process's pid in a pool process, else None
    key: str | None = None  # which export's state this is (the Ray engine installs it once per export)

    def install(self, state: Mapping[str, Any]) -> None:
        """Replace every field with `state`'s (missing ones reset to their defaults)."""
        for f in fields(self):
            setattr(self, f.name, state.get(f.name, f.default))


JOB_STATE = WorkerState()  # this process's job state (a worker's, or the export process's own with one worker)


def init_worker(state: Mapping[str, Any]) -> None:
    """Pool initializer: install the export's state; in a pool process also the orphan and signal rules."""
    parent = state.get("parent")
    if parent is not None:  # a pool process (not the export process itself)
        close_inherited()
        _die_with_parent(parent)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    JOB_STATE.install(state)


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
    parent = JOB_STATE.parent
    if parent is not None and os.getppid() != parent:
        os._exit(1)


class Workers:
    """Runs jobs in this process (`workers == 1`) or in a process pool, yielding results as they finish.

    At most `2 * workers` jobs are in flight, so job arguments are produced lazily (bounded memory).
    """

    def __init__(self, workers: int, state: Mapping[str, Any]) -> None:
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
        try:
            yield from _bounded(self.pool, fn, jobs, 2 * self.workers)
        except BrokenExecutor:  # a worker died: most often the SIGTERM sent to the whole process group
            deadline = time.monotonic() + _SIGTERM_GRACE_SEC
            while not interrupt.requested() and time.monotonic() < deadline:
                time.sleep(0.01)
            interrupt.check()  # that SIGTERM: the export stops as interrupted
            raise

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
        JOB_STATE.install({})


def bounded_results(submit: Callable[[Any], H], wait_some: Callable[[list[H]], tuple[Iterable[H], list[H]]],
                    result: Callable[[H], Any], jobs: Iterable[Any], in_flight: int) -> Iterator[Any]:
    """The one bounded-submit loop of both engines: submit jobs lazily, at most `in_flight` at a time
    (`submit(job)` gives a handle, `wait_some(running)` the finished and the still running handles,
    `result(handle)` a job's result or its error), and yield results in completion order."""
    it = iter(jobs)
    running: list[H] = []
    for job in it:
        running.append(submit(job))
        if len(running) >= in_flight:
            break
    while running:
        done, running = wait_some(running)
        for handle in done:
            yield result(handle)
            nxt = next(it, None)
            if nxt is not None:
                running.append(submit(nxt))


def _bounded(executor: Executor, fn: Callable[[Any], Any], jobs: Iterable[Any], in_flight: int) -> Iterator[Any]:
    """`bounded_results` over an executor, acting on a SIGTERM between results."""

    def wait_some(running: list[Future]) -> tuple[Iterable[Future], list[Future]]:
        done, pending = wait(running, timeout=_POLL_SEC, return_when=FIRST_COMPLETED)
        interrupt.check()
        return done, list(pending)

    def result(fut: Future) -> Any:
        try:
            return fut.result()
        except BaseException:
            interrupt.check()  # a worker stopped by the same SIGTERM: report the interruption
            raise

    return bounded_results(lambda job: executor.submit(fn, job), wait_some, result, jobs, in_flight)
