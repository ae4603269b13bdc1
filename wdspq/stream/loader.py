"""`StreamLoader`: a DataLoader over a `ShardStream` that counts, in the main process, the batches it hands to
the training loop; its `state_dict()` is a small JSON-able dict from which a fresh process continues with
exactly the batches an uninterrupted run would have produced (R3), or, under another world size, worker count
or batch size, finishes the epoch exactly once (R4).
"""

from __future__ import annotations

import gc
import multiprocessing
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..cursor import CursorState, RankCursor, Topology, check_compatible, merge_states, resume
from ..errors import StateError, WdspqError
from .control import ControlBlock
from .dataset import ShardStream
from .pipeline import apply_batch_stages
from .ring import RING_KEY, BatchLayout, BatchRing

DEFAULT_PREFETCH = 4


class StreamLoader(DataLoader):
    """A DataLoader over a ShardStream with exact, self-checking resume (README "Streaming and resuming exactly", R1-R7).

    - `state_dict()`: a plain JSON-serialisable dict counting the batches this loader handed to the
      caller (not what workers prefetched). With torch.distributed initialised and world size > 1 it
      is a collective call: every rank must call it, and each gets the merged state of all ranks.
      Without torch.distributed each rank's state holds its own position; merge them with
      `wdspq.merge_states` to resume under another topology.
    - `load_state_dict(state)`: checks manifest, window spec, seed and shuffle (StateError naming the
      difference) and takes effect at the next `iter()` (an iterator that has not yet produced a batch
      starts from it too). Loading while an iteration is running makes that iteration raise StateError
      at its next batch (never a silent restart); so does `set_epoch` or starting another `iter()`.
      Loading twice: the last state wins.
    - `set_epoch(e)`: another epoch starts it fresh at the next `iter()`; the current epoch keeps its
      position (so a loop `for e in range(state_epoch, E): set_epoch(e)` resumes correctly). An
      `iter()` after a completed epoch without `set_epoch` moves to the next epoch; an `iter()` after
      an interrupted one continues it. The epoch reaches every worker, persistent or not.
    - `len(loader)`: the batches an `iter()` started now would yield (the rest of a resumed epoch).
    - DataLoader arguments that reorder or rebatch (`shuffle`, `sampler`, `batch_sampler`, `drop_last`,
      `in_order=False`) are refused.
    - Every rank yields the same number of batches (`even="pad"`: flagged repeats with window_index -1;
      `"drop"`: surplus dropped; `"none"`: no balancing).
    - `prefetch_factor` defaults to 4 batches per worker when the ring is used (DataLoader's own default, 2,
      otherwise: batches in fresh segments then take no more shared memory than a plain DataLoader's).
    - `shared_ring` (default True): with workers, batches travel through reusable shared-memory blocks
      (wdspq.stream.ring) instead of a fresh segment each; the batches are the same either way.
    """

    def __init__(
        self,
        stream: ShardStream,
        batch_size: int = 32,
        num_workers: int = 0,
        even: str | None = None,
        interleave: int | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        shared_ring: bool = True,
        **dataloader_kwargs: Any,
    ) -> None:
        for bad in ("shuffle", "sampler", "batch_sampler", "drop_last"):
            if dataloader_kwargs.get(bad):
                raise WdspqError(f"StreamLoader does not take {bad}=: the stream orders and batches itself")
        if not dataloader_kwargs.get("in_order", True):
            raise WdspqError("StreamLoader does not take in_order=False: the state counts batches in the plan's order")
        if batch_size is None or int(batch_size) < 1:
            raise WdspqError(f"batch_size must be >= 1, got {batch_size}")
        topo = Topology(
            world_size=stream.world_size,
            num_workers=int(num_workers),
            batch_size=int(batch_size),
            interleave=int(interleave if interleave is not None else stream.interleave),
            even=even if even is not None else stream.even,
        )
        # Default collation happens inside the stream (vectorised, in the workers); a custom collate_fn
        # gets the per-sample path with the DataLoader's own batching. The view's workers read the plan of
        # each iteration from the control block this loader publishes before it starts (`_prepare`).
        batched = collate_fn is None
        view = stream.loader_view(topo, batched)
        workers = int(num_workers)
        ring_layout, per_worker = None, 0
        if batched and workers > 0 and shared_ring and not stream.user_stages:  # user stages: default_collate
            ring_layout = BatchLayout.of(stream._codec.dtype, stream._codec.schema, topo.batch_size)
            per_worker = int(dataloader_kwargs.get("prefetch_factor") or DEFAULT_PREFETCH) + 2  # a block per batch in flight
            if not BatchRing.fits(ring_layout.nbytes * per_worker * workers):
                ring_layout = None  # too big for this machine's shared memory: fresh segments, DataLoader's prefetch
        if ring_layout is not None:  # whole batches per fetch: a deeper queue smooths their uneven cost (+5 % here)
            dataloader_kwargs.setdefault("prefetch_factor", DEFAULT_PREFETCH)
        super().__init__(view, batch_size=None if batched else int(batch_size), num_workers=workers,
                         collate_fn=collate_fn, **dataloader_kwargs)
        self.stream = stream
        self.topology = topo
        self.rank = stream.rank
        self._epoch = 0
        self._state: CursorState = stream.fresh_state(0, topo)  # what the next iter() continues from
        self._explicit_epoch = False
        self._cursor: RankCursor | None = None
        self._generation = 0
        if ring_layout is not None:
            view.attach_ring(BatchRing(ring_layout, workers, per_worker, self.multiprocessing_context))

    @property
    def batch_size(self) -> int | None:  # type: ignore[override]
        """Samples per batch. The stream batches in its workers, so the DataLoader underneath has none of its
        own; this reports the loader's batch size all the same (tools that read `loader.batch_size`)."""
        topo = self.__dict__.get("topology")
        return topo.batch_size if topo is not None else self.__dict__.get("_dataloader_batch_size")

    @batch_size.setter
    def batch_size(self, value: int | None) -> None:
        self.__dict__["_dataloader_batch_size"] = value

    # -- state ---------------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self._epoch

    def _local_state(self) -> CursorState:
        return self._cursor.state() if self._cursor is not None else self._state

    def state_dict(self, gather: bool = True, timeout: float | None = 300.0) -> dict[str, Any]:
        """Where this loader stands (see the class doc).

        Under torch.distributed with world size > 1, `gather=True` is a collective: every rank must call
        it at the same point and each gets the merged state (then save it on rank 0). With the gloo
        backend a rank that calls it alone fails after `timeout` seconds with a StateError that says so,
        instead of hanging. `gather=False` returns this rank's own state (not a collective); merge the
        ranks' states with `wdspq.merge_states` before an elastic resume.
        """
        st = self._local_state().to_dict()
        dist = torch.distributed
        if not gather or self.topology.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
            return self.stream._annotate_state(st)
        if timeout and dist.get_backend() == "gloo":
            from datetime import timedelta

            try:
                dist.monitored_barrier(timeout=timedelta(seconds=float(timeout)))
            except RuntimeError as e:
                raise StateError(
                    "StreamLoader.state_dict() is a collective under torch.distributed and not every rank called it "
                    f"within {timeout:g} s: call it on every rank at the same batch (then save on rank 0 only), or "
                    "call state_dict(gather=False) on each rank and combine them with wdspq.merge_states "
                    f"({' '.join(str(e).split())[:200]})"
                ) from None
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, st)
        return self.stream._annotate_state(merge_states(gathered))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` at the next iter() (see the class doc)."""
        m = self.stream.manifest
        self.stream._check_state(state)
        st = check_compatible(state, m.id, m.spec_id, self.stream.seed, bool(self.stream.shuffle), len(m.shards),
                              self.stream.shard_order)
        r = resume(st, self.stream.shard_sizes, self.topology, self.rank, self.stream._blocks)  # fail now, not at iter(), if unusable
        cap = ControlBlock.capacity(len(m.shards), self.topology.n_slots)
        if len(r.state.consumed) > cap:
            raise StateError(f"this state has {len(r.state.consumed)} consumed ranges, more than this loader carries "
                             f"to its workers ({cap}): resume it with more workers, or finish the epoch elsewhere")
        self._state = st
        self._epoch = st.epoch
        self._cursor = None
        self._explicit_epoch = True
        self._generation += 1

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the next iter(); the current epoch keeps its position."""
        epoch = int(epoch)
        if epoch < 0:
            raise WdspqError(f"epoch must be >= 0, got {epoch}")
        if epoch != self._epoch:
            self._state = self.stream.fresh_state(epoch, self.topology)
            self._cursor = None
            self._epoch = epoch
            self._generation += 1
        else:
            self._state = self._local_state()
            self._cursor = None
            self._generation += 1
        self._explicit_epoch = True

    # -- iteration -----------------------------------------------------------------------------------
    def _prepare(self) -> None:
        """Choose the segment the next iteration continues, publish its plan to the workers, start counting."""
        st = self._local_state()
        if st.complete and not self._explicit_epoch:
            st = self.stream.fresh_state(st.epoch + 1, self.topology)
            self._epoch = st.epoch
        self._explicit_epoch = False
        r = resume(st, self.stream.shard_sizes, self.topology, self.rank, self.stream._blocks)
        self.dataset.publish(ControlBlock(  # type: ignore[attr-defined]
            epoch=r.state.epoch, base=list(r.plan.base), consumed=[list(c) for c in r.plan.consumed],
            skip=[int(x or 0) for x in r.skip], start_worker=[int(x or 0) for x in r.start_worker],
            generation=self._generation))
        self._state = r.state
        self._cursor = RankCursor(r.plan, self.rank, r.state)

    def __iter__(self) -> Iterator[Any]:
        """Start the next iteration now (not at its first batch): a `state_dict()` taken right after
        `iter()` at an epoch boundary already records the new epoch."""
        self._generation += 1
        self._prepare()
        assert self._cursor is not None
        return self._iterate(self._generation, self._cursor)

    def _iterate(self, generation: int, cursor: RankCursor) -> Iterator[Any]:
        if self._generation != generation:
            # load_state_dict or set_epoch after iter() but before the first batch: start from that
            # state instead (the workers have not read the plan yet; documented in the class doc)
            self._generation += 1
            self._prepare()
            generation, cursor = self._generation, self._cursor  # type: ignore[assignment]
        if cursor.done:
            return
        ring: BatchRing | None = self.dataset._ring  # type: ignore[attr-defined]
        pin = bool(self.pin_memory) and torch.cuda.is_available()
        stages = self.dataset.batch_stages  # type: ignore[attr-defined]
        it = self._start_iterator()
        if ring is not None and self.persistent_workers:
            ring.reclaim_others(generation)
        try:
            while True:
                # Check before fetching: with persistent workers a newer iteration shares the worker
                # iterator, and a stale fetch would steal (and lose) one of its batches.
                self._check_generation(generation)
                try:
                    batch = next(it)
                except StopIteration:
                    break
                self._check_generation(generation)
                if ring is not None and isinstance(batch, dict) and RING_KEY in batch:
                    batch = ring.take(batch, pin)
                n, wi = _batch_info(batch)  # read before the batch stages, which may drop window_index
                if stages:
                    batch = apply_batch_stages(batch, stages, n)
                cursor.record(n, wi)
                yield batch
                if cursor.done:
                    break
        finally:
            if ring is not None and not self.persistent_workers:
                _end_workers(it, ring, generation)
            del it

    def _start_iterator(self) -> Any:
        """The DataLoader's iterator; forked workers started under `gc.freeze()` (undone at once here).

        Why: a forked worker's first full collection walked every object inherited from this process and so
        copied every page holding one (~11,000 page faults and ~80 ms of CPU per worker on the sim table,
        half of the first epoch's batch in a short run); frozen, they are outside its collections. This
        process unfreezes them right after the fork, so its own collections are unchanged. Skipped when
        objects are already frozen (the user's own `gc.freeze()`), without workers or when they start
        otherwise (persistent workers already running; spawn or forkserver)."""
        starts = self.num_workers > 0 and (not self.persistent_workers or self._iterator is None)
        ctx = self.multiprocessing_context
        method = (ctx.get_start_method() if ctx is not None else  # the default, without fixing it
                  multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0])
        freeze = starts and method == "fork" and gc.get_freeze_count() == 0
        if freeze:
            gc.freeze()
        try:
            return super().__iter__()
        finally:
            if freeze:
                gc.unfreeze()

    def _check_generation(self, generation: int) -> None:
        if self._generation != generation:
            raise StateError(
                "the loader state changed (load_state_dict, set_epoch or a newer iter()) while this iteration "
                "was running; this iteration stops here, start a new one to continue from the new state"
            )

    def __len__(self) -> int:
        """Batches this rank still yields in the current epoch: what an iter() started now would yield
        (the whole epoch when starting fresh, the rest after a resume; during an iteration, the batches
        still to come)."""
        st = self._local_state()
        if st.complete and not self._explicit_epoch:
            st = self.stream.fresh_state(st.epoch + 1, self.topology)
        r = resume(st, self.stream.shard_sizes, self.topology, self.rank, self.stream._blocks)
        return RankCursor(r.plan, self.rank, r.state).batches_left


def _batch_info(batch: Any) -> tuple[int, np.ndarray | None]:
    """(samples in the batch, its window_index values or None) for the default collation (a dict of
    tensors), a collate_fn that keeps the list of sample dicts (`collate_fn=list`), or tensors/tuples."""
    if isinstance(batch, dict) and "window_index" in batch:
        wi = np.asarray(batch["window_index"]).reshape(-1)
        return len(wi), wi
    if isinstance(batch, (list, tuple)) and batch and all(isinstance(x, dict) for x in batch):
        if all("window_index" in x for x in batch):
            return len(batch), np.array([int(x["window_index"]) for x in batch], dtype=np.int64)
        return len(batch), None
    return _batch_len(batch), None


def _batch_len(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return len(batch)
    if isinstance(batch, dict):
        return _batch_len(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)):
        return _batch_len(batch[0])
    raise StateError("cannot count the samples of a batch from a custom collate_fn; return a dict with window_index")


def _end_workers(it: Any, ring: BatchRing, generation: int) -> None:
    """Stop this iteration's worker processes now and free the ring blocks of batches they sent that were
    never taken (an abandoned iteration). Only once every worker has exited: nobody can be writing them."""
    try:
        it._shutdown_workers()  # torch's own shutdown (also what the iterator's __del__ does)
        if all(not w.is_alive() for w in getattr(it, "_workers", [])):
            ring.reclaim(generation)
    except Exception:  # a torch without these internals: the blocks stay claimed, later batches use fresh memory
        pass
