"""Continuing a state under a topology (same topology: skip; another: fold, R3/R4) and the main process's
per-rank bookkeeping (`RankCursor`). See docs/cursor.md ("How a stream uses it")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import StateError
from .digest import ZERO_SET, RankDigests
from .plan import Plan
from .state import CursorState
from .topology import Topology


def _check_complete(st: CursorState, plan: Plan) -> None:
    """`complete: true` must follow from the counts (every slot the state knows delivered all its entries):
    a hand-set one would silently skip the rest of the epoch. (`false` with nothing left is harmless:
    the epoch resumes to nothing, e.g. a fresh state of an empty export.)"""
    known = [(s, d) for s, d in enumerate(st.delivered) if d is not None]
    short = next(((s, d) for s, d in known if d != plan.slot_length(s)), None)
    if st.complete and (short is not None or not known):
        detail = f"slot {short[0]} delivered {short[1]} of its {plan.slot_length(short[0])} entries" if short else "no slot is known"
        raise StateError(f"state field 'complete' is true but {detail}; it follows from the counts (was the "
                         "state edited?)")


@dataclass
class Resume:
    """What a stream needs to continue from a state under a topology.

    ``state``: the state of the segment being continued (the folded one after an elastic resume).
    ``skip[slot]``: entries the slot's worker skips (``None`` for slots this state does not know).
    ``start_worker[rank]``: logical worker of the rank's next batch; DataLoader worker ``j`` plays
    logical worker ``(j + start_worker[rank]) % N`` (``None`` for ranks this state does not know).
    """

    plan: Plan
    state: CursorState
    skip: list[int | None]
    start_worker: list[int | None]
    elastic: bool


def resume(
    state: CursorState | Mapping[str, Any],
    shard_sizes: Sequence[int],
    topology: Topology,
    rank: int | None = None,
    blocks: Sequence[int] | None = None,
) -> Resume:
    """Plan the continuation of ``state`` under ``topology``.

    Same topology (`Topology.key`): the state's plan, skipping what each slot delivered (R3); a
    per-rank state suffices, but ``rank``'s slots must be known when ``rank`` is given.
    Other topology: fold the segment into a new base (needs a full, merged state) and plan a new
    segment from it with zero counts (R4). ``blocks``: samples per ordinal block of each shard
    (`epoch_order.block_size`), where pieces are cut; the stream passes its own, and every caller that
    must agree with a stream's plan must pass the same.
    """
    st = CursorState.from_dict(state)  # type: ignore[arg-type]
    if len(st.base) != len(shard_sizes):
        raise StateError(f"state covers {len(st.base)} shards, the manifest has {len(shard_sizes)}")
    W = topology.world_size
    if st.topology.key() == topology.key():
        st = CursorState(**{**st.__dict__, "topology": topology})  # num_workers 0 and 1 plan alike
        old = Plan.for_state(st, shard_sizes, blocks)
        _check_complete(st, old)
        if rank is not None and rank not in st.known_ranks():
            raise StateError(
                f"this state does not hold rank {rank}'s position (it knows ranks {st.known_ranks()}): "
                "load the state rank saved, or a merged state"
            )
        start: list[int | None] = [None] * W
        for r in st.known_ranks():
            start[r] = old.next_worker(r, st.delivered)
        return Resume(plan=old, state=st, skip=list(st.delivered), start_worker=start, elastic=False)
    if not st.is_full():
        raise StateError(
            f"resuming under another topology ({st.topology.describe()} -> {topology.describe()}) needs every "
            f"rank's position, this state knows ranks {st.known_ranks()}: merge the per-rank states with "
            "wdspq.cursor.merge_states"
        )
    old = Plan.for_state(st, shard_sizes, blocks)
    _check_complete(st, old)
    # A finished epoch stays finished under any topology: with even="drop" its dropped surplus was never
    # delivered, and folding the counts would hand it out now.
    if st.complete:
        base, consumed = [int(x) for x in shard_sizes], []
    else:
        base, consumed = old.fold(st.delivered)
    new = Plan(shard_sizes, base, old.order, topology, consumed, old.split, blocks)
    folded = CursorState(
        manifest_id=st.manifest_id,
        spec_id=st.spec_id,
        seed=st.seed,
        shuffle=st.shuffle,
        epoch=st.epoch,
        topology=topology,
        base=base,
        delivered=[0] * topology.n_slots,
        digest_ordered=[""] * W,
        digest_set=[ZERO_SET] * W,
        digest_carried=st.total_set_digest(),
        complete=new.full_delivered() == [0] * topology.n_slots,
        shard_order=st.shard_order,
        consumed=consumed,
    )
    return Resume(plan=new, state=folded, skip=[0] * topology.n_slots, start_worker=[0] * W, elastic=True)


class RankCursor:
    """Main-process bookkeeping of one rank: counts what was yielded to the training loop.

    It knows from the plan which logical worker produced each batch (round-robin-skip-exhausted) and
    checks the batch size, so a wiring mistake fails loudly instead of corrupting the state.
    """

    def __init__(self, plan: Plan, rank: int, state: CursorState) -> None:
        self.plan, self.rank = plan, rank
        self._state = state
        N = plan.topology.workers
        self._slots = list(range(rank * N, (rank + 1) * N))
        self.delivered = [
            int(state.delivered[s]) if state.delivered[s] is not None else -1 for s in self._slots
        ]
        if min(self.delivered, default=0) < 0:
            raise StateError(f"the state does not hold rank {rank}'s position")
        self._t = plan._position(rank, state.delivered)
        self._workers, self._sizes = plan._rank_order(rank)
        self.start_worker = self.next_worker() or 0
        self.digests = RankDigests(state.digest_ordered[rank] if state.digest_ordered[rank] is not None else "",
                                   state.digest_set[rank] if state.digest_set[rank] is not None else ZERO_SET)

    def next_worker(self) -> int | None:
        """Logical worker of the next batch, None when the rank is done."""
        return int(self._workers[self._t]) if self._t < len(self._workers) else None

    def expected_size(self) -> int | None:
        """Samples in the next batch, None when the rank is done."""
        return int(self._sizes[self._t]) if self._t < len(self._sizes) else None

    @property
    def done(self) -> bool:
        """Whether the rank has yielded every batch of the segment."""
        return self._t >= len(self._workers)

    @property
    def batches_left(self) -> int:
        """Batches the rank still yields in this segment."""
        return len(self._workers) - self._t

    def record(self, n_samples: int, window_index: Any = None) -> int:
        """Count one batch handed to the training loop; returns its logical worker.

        ``window_index`` (the batch's values, pads -1) updates the audit digests when given.
        """
        if self.done:
            raise StateError(f"rank {self.rank} recorded a batch after its last one of the segment")
        w, n = int(self._workers[self._t]), int(self._sizes[self._t])
        if n_samples != n:
            raise StateError(
                f"rank {self.rank}: batch {self._t} should hold {n} samples (worker {w}), got {n_samples}"
            )
        self.delivered[w] += n
        self._t += 1
        if window_index is not None:
            self.digests.add(window_index)
        return w

    def state(self) -> CursorState:
        """This rank's state: its own slots and digests; other ranks' unknown unless world_size is 1."""
        st = self._state
        N, rank = self.plan.topology.workers, self.rank
        delivered: list[int | None] = [None] * self.plan.topology.n_slots
        for w, d in enumerate(self.delivered):
            delivered[rank * N + w] = d
        W = self.plan.topology.world_size
        ordered: list[str | None] = [None] * W
        sets: list[str | None] = [None] * W
        ordered[rank], sets[rank] = self.digests.ordered, self.digests.set_digest
        return CursorState(
            manifest_id=st.manifest_id,
            spec_id=st.spec_id,
            seed=st.seed,
            shuffle=st.shuffle,
            epoch=st.epoch,
            topology=self.plan.topology,
            base=list(self.plan.base),
            delivered=delivered,
            digest_ordered=ordered,
            digest_set=sets,
            digest_carried=st.digest_carried,
            complete=self.done,
            shard_order=st.shard_order,
            consumed=[list(r) for r in self.plan.consumed],
        )
