"""Batches from DataLoader workers to the main process: per-key tensors of one storage, and a ring of reusable
shared-memory blocks so a worker does not create (and fault in) a fresh shared segment for every batch.

Why: a fresh shared-memory segment costs its creation plus a page fault per 4 KiB page on first write; for a
5 MB batch that was ~2.5 ms here, as much as decoding the batch. A ring block is faulted in once and reused.

Protocol (`BatchRing`): each worker owns `per_worker` blocks. A worker claims a free block (state 0 -> the
iteration's generation, under a lock), fills it and yields a small descriptor instead of tensors. The main
process hands the batch out as tensors viewing the block itself (state -> HELD) and frees the block (state
-> 0) when the last of those tensors, or of any view of them, is freed; with `pin_memory` it copies the batch
into pinned memory and frees the block at once. Why no copy: the main process is the one serial step of a
loader with workers; copying each batch out of the ring was half of its work per batch. A worker that finds
no free block (e.g. the training loop keeps batches) falls back to a fresh segment, so the ring never blocks
a worker and never changes a batch. Descriptors that the DataLoader discards (an abandoned iteration) would
leak their blocks; the loader reclaims them once nobody can write them: when that iteration's worker
processes have exited, or, with persistent workers, when the next iteration has started (the DataLoader
drained the old one's batches). A HELD block is never reclaimed: only its tensors' end frees it.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import shutil
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

RING_KEY = "__wdspq_ring__"
RING_MAX_BYTES = 1 << 30  # never more than this (or a quarter of /dev/shm) for the ring
HELD = -1  # a block's state while the main process's batch tensors view it (generations are >= 1)


@functools.cache
def torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


@dataclass(frozen=True)
class BatchLayout:
    """Where each key of a batch of `rows` records lives in one byte block (64-byte aligned regions)."""

    keys: tuple[str, ...]
    offsets: tuple[int, ...]
    dtypes: tuple[np.dtype, ...]
    shapes: tuple[tuple[int, ...], ...]  # per-row shape
    rows: int
    nbytes: int
    row_bytes: tuple[int, ...] = ()  # bytes of one row of each key

    @classmethod
    def of(cls, dtype: np.dtype, keys: Any, rows: int) -> BatchLayout:
        """The layout of `rows` records of the structured `dtype`, keys in the given order."""
        fields = [dtype.fields[k][0] for k in keys]
        dtypes, shapes = tuple(f.base for f in fields), tuple(tuple(f.shape) for f in fields)
        row_bytes = tuple(dt.itemsize * int(np.prod(shape, dtype=np.int64)) for dt, shape in zip(dtypes, shapes))
        return cls(tuple(keys), (), dtypes, shapes, 0, 0, row_bytes).resized(rows)

    def resized(self, rows: int) -> BatchLayout:
        """The same keys laid out for `rows` rows."""
        offsets, total = [], 0
        for rb in self.row_bytes:
            offsets.append(total)
            total += -(-rows * rb // 64) * 64
        return BatchLayout(self.keys, tuple(offsets), self.dtypes, self.shapes, rows, max(total, 64), self.row_bytes)

    def tensors(self, block: torch.Tensor | np.ndarray, n: int) -> dict[str, torch.Tensor]:
        """Per-key tensors of the first `n` rows, all views of `block` (uint8, `nbytes`).

        A torch block gives torch views (a shared storage stays one storage when a worker's batch is
        pickled); a numpy block gives `from_numpy` of numpy views, each holding `block`'s memory alive: a
        third of the cost (24 against 57 us for 17 keys), and this is the main process's work per batch."""
        out = {}
        if isinstance(block, np.ndarray):
            from_numpy = torch.from_numpy
            for k, off, dt, shape, rb in zip(self.keys, self.offsets, self.dtypes, self.shapes, self.row_bytes):
                out[k] = from_numpy(block[off:off + n * rb].view(dt).reshape(n, *shape))
            return out
        for k, off, dt, shape, rb in zip(self.keys, self.offsets, self.dtypes, self.shapes, self.row_bytes):
            out[k] = block[off:off + n * rb].view(torch_dtype(dt)).view(n, *shape)
        return out

    def fill(self, block: np.ndarray, rec: np.ndarray) -> None:
        """Copy a structured array of records (n <= rows) into the block (uint8 numpy), key by key."""
        n = len(rec)
        for k, off, dt, shape, rb in zip(self.keys, self.offsets, self.dtypes, self.shapes, self.row_bytes):
            np.copyto(block[off:off + n * rb].view(dt).reshape(n, *shape), rec[k])


@functools.lru_cache(maxsize=32)
def _layout(dtype: np.dtype, keys: tuple[str, ...], rows: int) -> BatchLayout:
    """`BatchLayout.of`, once per record layout and batch size (it is asked for on every batch)."""
    return BatchLayout.of(dtype, keys, rows)


def shared_block(nbytes: int) -> torch.Tensor | None:
    """An uninitialised uint8 tensor in shared memory (as default collation allocates), or None."""
    try:
        storage = torch.UntypedStorage._new_shared(nbytes)
        return torch.empty(0, dtype=torch.uint8).set_(storage)
    except Exception:  # private API: callers fall back to a plain block (the pickler then copies once)
        return None


def batch_tensors(rec: np.ndarray, keys: Any, shared: bool) -> dict[str, torch.Tensor]:
    """Contiguous per-key tensors of a batch of records, all views of ONE storage (in a DataLoader worker, a
    shared one: handing it over passes one segment instead of one per key, and no copy)."""
    layout = _layout(rec.dtype, tuple(keys), len(rec))
    if not shared:  # numpy views: cheaper tensors (no worker: nothing is pickled)
        arr = np.empty(layout.nbytes, dtype=np.uint8)
        layout.fill(arr, rec)
        return layout.tensors(arr, len(rec))
    block = shared_block(layout.nbytes)
    if block is None:
        block = torch.empty(layout.nbytes, dtype=torch.uint8)
    layout.fill(block.numpy(), rec)
    return layout.tensors(block, len(rec))


class BatchRing:
    """`per_worker` reusable shared blocks for each of `workers` DataLoader workers (see the module doc)."""

    def __init__(self, layout: BatchLayout, workers: int, per_worker: int, context: Any = None) -> None:
        self.layout, self.workers, self.per_worker = layout, workers, per_worker
        n = workers * per_worker
        blocks = shared_block(n * layout.nbytes)  # made in shared memory: not made elsewhere, then copied there
        self.blocks = blocks if blocks is not None else torch.empty(n * layout.nbytes, dtype=torch.uint8).share_memory_()
        self.state = torch.zeros(n, dtype=torch.int64).share_memory_()  # 0: free; else the claiming generation
        self.lock = (context or multiprocessing).Lock()
        self._np: tuple[np.ndarray, np.ndarray] | None = None

    @staticmethod
    def fits(nbytes: int) -> bool:
        """Whether a ring of `nbytes` is modest next to the machine's shared memory."""
        try:
            free = shutil.disk_usage("/dev/shm").free
        except OSError:
            free = RING_MAX_BYTES * 4
        return nbytes <= min(RING_MAX_BYTES, free // 4)

    def __getstate__(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["_np"] = None
        return d

    def _views(self) -> tuple[np.ndarray, np.ndarray]:
        if self._np is None:
            self._np = (self.blocks.numpy(), self.state.numpy())
        return self._np

    def _block(self, idx: int) -> slice:
        return slice(idx * self.layout.nbytes, (idx + 1) * self.layout.nbytes)

    def claim(self, worker: int, generation: int) -> int | None:
        """A free block of this worker, now marked with `generation`; None when all are in use."""
        _, state = self._views()
        lo = worker * self.per_worker
        with self.lock:
            for idx in range(lo, lo + self.per_worker):
                if state[idx] == 0:
                    state[idx] = generation
                    return idx
        return None

    def put(self, worker: int, generation: int, rec: np.ndarray) -> dict[str, Any] | None:
        """In a worker: write the records into a claimed block and return the descriptor to yield (None: no
        free block, send tensors instead)."""
        idx = self.claim(worker, generation)
        if idx is None:
            return None
        blocks, _ = self._views()
        self.layout.fill(blocks[self._block(idx)], rec)
        return {RING_KEY: (idx, len(rec), generation)}

    def take(self, descriptor: dict[str, Any], pin: bool = False) -> dict[str, torch.Tensor]:
        """In the main process: the batch of a descriptor as per-key tensors viewing its block, which is freed
        when they are all gone (`pin`: copied into pinned memory, the block freed now)."""
        idx, n, generation = descriptor[RING_KEY]
        blocks, state = self._views()
        base = idx * self.layout.nbytes
        if not pin:
            with self.lock:
                mine = int(state[idx]) == generation
                if mine:
                    state[idx] = HELD
            if mine:
                # Every key's array leads back to `owner` (the memoryview under `view`, however numpy
                # collapses its bases): the block is freed when the last tensor (or view of one) is gone.
                view = np.frombuffer(memoryview(blocks[base:base + self.layout.nbytes]), dtype=np.uint8)
                owner = view.base
                weakref.finalize(owner, _release, state, idx, os.getpid()).atexit = False
                return self.layout.tensors(view, n)
        compact = self.layout.resized(n)
        # numpy's allocation: glibc reuses the memory of freed batches, so the copy does not fault in fresh pages
        dst = np.empty(compact.nbytes, dtype=np.uint8)
        out_block = torch.from_numpy(dst)
        for a, b, rb in zip(self.layout.offsets, compact.offsets, self.layout.row_bytes):
            dst[b:b + n * rb] = blocks[base + a:base + a + n * rb]  # numpy: one memcpy, one thread
        out = compact.tensors(out_block.pin_memory() if pin else out_block, n)
        with self.lock:
            if state[idx] == generation:
                state[idx] = 0
        return out

    def reclaim(self, generation: int) -> None:
        """Free every block still marked with `generation` (its workers have exited: nobody writes them)."""
        _, state = self._views()
        with self.lock:
            state[state == generation] = 0

    def reclaim_others(self, generation: int) -> None:
        """Free every block of an older generation (persistent workers, once a new iteration has started: the
        DataLoader has drained every batch of the old one, so nobody writes or takes those blocks); HELD
        blocks stay held."""
        _, state = self._views()
        with self.lock:
            state[(state > 0) & (state != generation)] = 0

    def in_use(self) -> int:
        return int((self._views()[1] != 0).sum())


def _release(state: np.ndarray, idx: int, pid: int) -> None:
    """Free a HELD block once the batch tensors viewing it are gone, in the process that took it only (a
    forked child's copies of those tensors say nothing about the parent's). No lock: only the taking process
    moves a block out of HELD, and a finalizer may run while this process holds the lock (a collection)."""
    if os.getpid() == pid and state[idx] == HELD:
        state[idx] = 0
