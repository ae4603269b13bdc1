"""The Ray engine of the export: the same spill and assemble jobs as the local pool, run as Ray tasks.

Ray schedules, retries a task whose worker process dies (`max_retries`), and moves the job state
(the dataset handle, the storage, the tuned codec) through its object store once. The jobs are the
local engine's own functions and each writes its output atomically under a name fixed by the job,
so the shards, indexes and manifest are byte-identical to `engine="local"` however many workers or
nodes run them, and a retried job simply rewrites the same bytes. Spill files are written where the
spill folder is: on a cluster it must be a file system every node sees (docs/ray.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..errors import WdspqError
from .pool import JOB_STATE, bounded_results, init_worker

TASK_RETRIES = 3


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise WdspqError("--engine ray needs Ray: pip install 'wdspq[ray]' (or pip install ray)") from None
    return ray


def _call(state_key: str, state: dict[str, Any], fn: Callable[[Any], Any], job: Any) -> Any:
    """Runs in a Ray worker: install the job state once per worker process, then run the job."""
    if JOB_STATE.key != state_key:
        init_worker({**state, "parent": None, "key": state_key})
    return fn(job)


class RayWorkers:
    """`Workers`' interface over Ray tasks: results as they finish, at most `2 x cluster CPUs` in flight."""

    def __init__(self, state: dict[str, Any], address: str | None = None) -> None:
        ray = self.ray = _ray()
        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
                     include_dashboard=False, configure_logging=False)
        self.inflight = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        self._state = ray.put(state)
        import uuid

        self._key = uuid.uuid4().hex
        self._remote = ray.remote(num_cpus=1, max_retries=TASK_RETRIES, retry_exceptions=False)(_call)

    def run(self, fn: Callable[[Any], Any], jobs: Iterable[Any], io_threads: int = 1) -> Iterator[Any]:
        """Results of `fn` over `jobs` as Ray tasks finish (`io_threads` is the local engine's: Ray tasks
        already run side by side)."""
        ray = self.ray

        def result(ref: Any) -> Any:
            try:
                return ray.get(ref)
            except ray.exceptions.RayTaskError as e:  # the job itself failed: its own error, one line
                cause = e.as_instanceof_cause()
                raise (cause if isinstance(cause, WdspqError) else WdspqError(str(cause))) from None

        return bounded_results(lambda job: self._remote.remote(self._key, self._state, fn, job),
                               lambda running: ray.wait(running, num_returns=1), result, jobs, self.inflight)

    def close(self, abort: bool = False) -> None:
        self._state = None
