"""The worker -> main hand-off (wdspq.stream.ring): reusable shared-memory blocks never change a batch, a full ring
falls back to fresh segments, and abandoned iterations give their blocks back."""

from __future__ import annotations

import pytest
import torch

import wdspq
from wdspq.stream.ring import BatchRing

SPEC = wdspq.WindowSpec(acts_length_sec=0.5, obs_length_sec=0.5, video_frame_offsets=[-1, 0])


@pytest.fixture(scope="module")
def export(small_table, tokenizer_path, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("handoff") / "shards"
    wdspq.export_shards(small_table, out, SPEC, tokenizer=tokenizer_path, samples_per_shard=40, progress=False)
    return str(out)


def _epoch(loader: wdspq.StreamLoader) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in b.items()} for b in loader]


def _same(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def _loader(export: str, **kw) -> wdspq.StreamLoader:
    return wdspq.StreamLoader(wdspq.ShardStream(export, seed=3), batch_size=7, **kw)


def test_ring_batches_equal_fresh_segments_and_in_process_batches(export, monkeypatch):
    taken = []
    orig = BatchRing.take
    monkeypatch.setattr(BatchRing, "take", lambda self, d, pin=False: taken.append(d) or orig(self, d, pin))
    ring = _loader(export, num_workers=2)
    assert ring.dataset._ring is not None
    got = _epoch(ring)
    assert taken and ring.dataset._ring.in_use() == 0  # batches came through the ring, every block is free again
    assert _same(got, _epoch(_loader(export, num_workers=2, shared_ring=False)))
    assert _same(got, _epoch(_loader(export, num_workers=2, persistent_workers=True)))
    # in-process batches are in another order (one slot per worker), but the same samples
    ids = sorted(int(i) for b in _epoch(_loader(export, num_workers=0)) for i in b["window_index"] if i >= 0)
    assert ids == sorted(int(i) for b in got for i in b["window_index"] if i >= 0)


def test_a_full_ring_falls_back_to_fresh_segments(export):
    """Every block held by someone else: each batch goes the old way, and the epoch is the same."""
    want = _epoch(_loader(export, num_workers=2, shared_ring=False))
    loader = _loader(export, num_workers=2)
    loader.dataset._ring.state.fill_(-5)  # claimed by a generation that never takes them
    assert _same(_epoch(loader), want)
    assert loader.dataset._ring.in_use() == loader.dataset._ring.state.numel()


@pytest.mark.parametrize("persistent", [False, True])
def test_abandoned_iterations_give_their_blocks_back(export, persistent):
    loader = _loader(export, num_workers=2, persistent_workers=persistent)
    for _ in range(4):  # more abandoned iterations than there are blocks per worker
        it = iter(loader)
        next(it), next(it)
        it.close()
    loader.set_epoch(1)
    got = _epoch(loader)
    assert loader.dataset._ring.in_use() == 0
    ref = _loader(export, num_workers=2, shared_ring=False)
    ref.set_epoch(1)
    assert _same(got, _epoch(ref))


def test_ring_works_with_spawned_workers(export):
    """The ring (tensors and its lock) travels to workers started with spawn, not only fork."""
    loader = _loader(export, num_workers=2, multiprocessing_context="spawn")
    assert _same(_epoch(loader), _epoch(_loader(export, num_workers=2, shared_ring=False)))
    assert loader.dataset._ring.in_use() == 0


def test_no_ring_when_shared_memory_is_small_and_prefetch_stays_the_dataloaders(export, monkeypatch):
    """A ring that would not fit leaves batches to fresh segments and DataLoader's prefetch of 2."""
    monkeypatch.setattr(BatchRing, "fits", staticmethod(lambda nbytes: False))
    loader = _loader(export, num_workers=2)
    assert loader.dataset._ring is None and loader.prefetch_factor == 2
    assert _same(_epoch(loader), _epoch(_loader(export, num_workers=2, shared_ring=False)))
    monkeypatch.undo()
    assert _loader(export, num_workers=2).prefetch_factor == 4
    assert _loader(export, num_workers=2, prefetch_factor=3).dataset._ring.per_worker == 5


def test_batches_view_their_block_until_every_view_is_gone(export):
    """A batch's tensors view its ring block (no copy in the main process); the block is freed only when the
    last view of any of them is gone, so a kept view is never overwritten by later batches or epochs."""
    want = _epoch(_loader(export, num_workers=2, shared_ring=False))
    loader = _loader(export, num_workers=2, persistent_workers=True)
    ring = loader.dataset._ring
    kept = None
    for i, b in enumerate(loader):
        if i == 1:
            kept = b["actions"][2:]  # a view of one key: the whole block stays held
    del b
    assert ring.in_use() == 1
    loader.set_epoch(1)
    assert len(_epoch(loader)) > ring.per_worker * 2  # more batches than blocks: every other block reused
    assert torch.equal(kept, want[1]["actions"][2:])
    del kept
    assert ring.in_use() == 0
    loader.set_epoch(0)
    assert _same(list(loader), want)  # batches kept without a copy: the ring runs out, workers use fresh segments


def test_workers_keep_freed_memory_once_each(export, tmp_path, monkeypatch):
    """Each DataLoader worker sets its malloc thresholds (stream/workermem.py) when it starts reading; the main
    process does not; a user's own thresholds are left alone."""
    import os

    from wdspq.stream import dataset, workermem

    calls = tmp_path / "calls"
    monkeypatch.setattr(dataset, "keep_freed_memory", lambda: calls.open("a").write(f"{os.getpid()}\n"))
    loader = _loader(export, num_workers=2, persistent_workers=True)
    for e in range(2):
        loader.set_epoch(e)
        _epoch(loader)
    _epoch(_loader(export, num_workers=0))
    pids = calls.read_text().split()
    assert len(set(pids)) == 2 and str(os.getpid()) not in pids
    if not os.path.exists("/lib/x86_64-linux-gnu/libc.so.6") and not os.path.exists("/lib/aarch64-linux-gnu/libc.so.6"):
        pytest.skip("glibc only")
    monkeypatch.setattr(workermem, "_done_pid", None)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert workermem.keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setattr(workermem, "_done_pid", None)
    assert workermem.keep_freed_memory() is True  # this test process's thresholds: harmless


def test_forked_workers_start_with_the_inherited_objects_frozen(export, tmp_path):
    """Workers forked by the loader see this process's objects frozen (their collections never walk, and so
    never copy, those pages); this process's own freeze count is back to 0 at once; a user's own freeze is
    left alone; batches unchanged."""
    import gc

    out = tmp_path / "counts"

    def init(_):
        out.open("a").write(f"{gc.get_freeze_count()}\n")

    want = _epoch(_loader(export, num_workers=2, shared_ring=False, multiprocessing_context="fork"))
    loader = _loader(export, num_workers=2, persistent_workers=True, worker_init_fn=init, multiprocessing_context="fork")
    assert gc.get_freeze_count() == 0
    got = _epoch(loader)
    assert gc.get_freeze_count() == 0
    counts = [int(x) for x in out.read_text().split()]
    assert len(counts) == 2 and min(counts) > 1000
    assert _same(got, want)
    gc.freeze()
    try:
        assert _same(_epoch(_loader(export, num_workers=2, multiprocessing_context="fork")), want)
        assert gc.get_freeze_count() > 0  # still frozen: not undone by the loader
    finally:
        gc.unfreeze()
