"""The export's process pool: state installed once per worker, bounded jobs in flight, orphan exit."""

from __future__ import annotations

import os
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

# worker processes: state is installed once per process by the pool initializer
W: dict[str, Any] = {}


def init_worker(state: dict[str, Any]) -> None:
    W.clear()
    W.update(state)


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
            yield from map(fn, jobs)
            return
        if self.pool is None:
            with ThreadPoolExecutor(io_threads, thread_name_prefix="wdspq-export") as threads:
                yield from _bounded(threads, fn, jobs, 2 * io_threads)
            return
        yield from _bounded(self.pool, fn, jobs, 2 * self.workers)

    def close(self) -> None:
        if self.pool is not None:
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
        done, running = wait(running, return_when=FIRST_COMPLETED)
        for fut in done:
            yield fut.result()
            nxt = next(it, None)
            if nxt is not None:
                running.add(executor.submit(fn, nxt))
