"""Where an epoch stands (`CursorState`): its JSON form, the checks on a loaded one, start-of-epoch
states, the compatibility check against a stream, and merging per-rank states."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import epoch_order
from ..errors import StateError
from .digest import ZERO_SET, combine_set_digests
from .topology import Topology

# A plan-only order (not a stream option): one virtual shard read in position order, what is left cut into
# batches dealt in the order the loaders deliver them (wdspq.cursor.plan.batch_pieces), so the delivered stream
# of every rank and worker together is the position order; a mixture's epoch is planned so.
BATCHES = "batches"
PLAN_ORDERS = (*epoch_order.ORDERS, BATCHES)

STREAM_KEYS = ("mixture", "blocks")  # entries a stream adds to its saved states (`merge_states` keeps them)

STATE_VERSION = 2  # 2: in-shard order and consumed ranges (1: sequential order, prefixes only)


@dataclass
class CursorState:
    """Where an epoch stands: plain data, O(shards + slots), JSON via `to_dict`/`from_dict`.

    ``delivered[slot]`` counts the entries (real + pad) the slot yielded in this segment, ``None``
    where this state does not know (a rank's own state knows only its own slots; `merge_states`
    builds the full state an elastic resume needs). ``digest_ordered``/``digest_set`` are per rank
    (``None`` where unknown) for this segment; ``digest_carried`` is the set digest of the windows
    delivered in earlier segments of the epoch (before an elastic fold). ``complete``: every slot this
    state knows has delivered all its entries (for a full state: the epoch is over). ``shard_order``
    names the in-shard order (wdspq.epoch_order); ``consumed`` lists ``[shard, start, end]`` position
    ranges consumed in earlier segments past the shard's ``base`` (empty unless a piece was part of a
    shard when the topology changed).
    """

    manifest_id: str
    spec_id: str
    seed: int
    shuffle: bool
    epoch: int
    topology: Topology
    base: list[int]
    delivered: list[int | None]
    digest_ordered: list[str | None] = field(default_factory=list)
    digest_set: list[str | None] = field(default_factory=list)
    digest_carried: str = ZERO_SET
    complete: bool = False
    version: int = STATE_VERSION
    shard_order: str = "block"
    consumed: list[list[int]] = field(default_factory=list)

    def is_full(self) -> bool:
        """Whether every slot's count and every rank's digests are known."""
        return (
            all(d is not None for d in self.delivered)
            and all(d is not None for d in self.digest_ordered)
            and all(d is not None for d in self.digest_set)
        )

    def known_ranks(self) -> list[int]:
        """Ranks whose slots are all known in this state."""
        N = self.topology.workers
        return [
            r
            for r in range(self.topology.world_size)
            if all(d is not None for d in self.delivered[r * N : (r + 1) * N])
        ]

    def total_set_digest(self) -> str:
        """Set digest of every window delivered so far in the epoch (needs a full state)."""
        if any(d is None for d in self.digest_set):
            raise StateError("the epoch's set digest needs every rank's digest: merge the per-rank states")
        return combine_set_digests([self.digest_carried, *self.digest_set])  # type: ignore[list-item]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (ints, strs, bools, lists, None)."""
        return {
            "version": self.version,
            "manifest_id": self.manifest_id,
            "spec_id": self.spec_id,
            "seed": int(self.seed),
            "shuffle": bool(self.shuffle),
            "epoch": int(self.epoch),
            "topology": self.topology.to_dict(),
            "shard_order": self.shard_order,
            "base": [int(b) for b in self.base],
            "consumed": [[int(x) for x in r] for r in self.consumed],
            "delivered": [None if d is None else int(d) for d in self.delivered],
            "digest": {
                "ordered": list(self.digest_ordered),
                "set": list(self.digest_set),
                "carried": self.digest_carried,
            },
            "complete": bool(self.complete),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CursorState:
        """Inverse of `to_dict`; raises StateError naming what is missing or malformed."""
        if isinstance(d, CursorState):
            return d
        if not isinstance(d, Mapping):
            raise StateError(f"a loader state must be a dict, got {type(d).__name__}")
        version = d.get("version")
        if version == 1:  # saved before in-shard orders: the sequential order, whole shards (same plan)
            d = {**d, "shard_order": "sequential", "consumed": []}
        elif version != STATE_VERSION:
            raise StateError(f"state format version {version!r} is not supported (expected {STATE_VERSION})")
        missing = [
            k
            for k in (
                "manifest_id",
                "spec_id",
                "seed",
                "shuffle",
                "epoch",
                "topology",
                "shard_order",
                "base",
                "consumed",
                "delivered",
                "digest",
                "complete",
            )
            if k not in d
        ]
        if missing:
            raise StateError(f"state is missing {', '.join(missing)}")
        topo = Topology.from_dict(d["topology"])
        digest = d["digest"]
        if not isinstance(d["complete"], bool):
            raise StateError(f"state field 'complete' is {d['complete']!r}, expected true or false")
        try:
            st = cls(
                manifest_id=str(d["manifest_id"]),
                spec_id=str(d["spec_id"]),
                seed=_state_int(d["seed"], "seed"),
                shuffle=bool(d["shuffle"]),
                epoch=_state_int(d["epoch"], "epoch"),
                topology=topo,
                base=[_state_int(b, f"base[{i}]") for i, b in enumerate(d["base"])],
                delivered=[None if x is None else _state_int(x, f"delivered[{i}]") for i, x in enumerate(d["delivered"])],
                digest_ordered=[None if x is None else str(x) for x in digest["ordered"]],
                digest_set=[None if x is None else str(x) for x in digest["set"]],
                digest_carried=str(digest["carried"]),
                complete=d["complete"],
                version=int(version),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise StateError(f"state is malformed: {e}") from e
        try:
            st.shard_order, st.consumed = str(d["shard_order"]), [[int(x) for x in r] for r in d["consumed"]]
        except (TypeError, ValueError) as e:
            raise StateError(f"state is malformed: {e}") from e
        st.version = STATE_VERSION  # a format-1 state is re-saved in format 2 (same plan, sequential order)
        if st.shard_order not in PLAN_ORDERS:
            raise StateError(f"state shard_order {st.shard_order!r} is not one of {PLAN_ORDERS}")
        if any(len(r) != 3 for r in st.consumed):
            raise StateError("state consumed ranges must be [shard, start, end] each")
        if len(st.delivered) != topo.n_slots:
            raise StateError(
                f"state has {len(st.delivered)} delivered counts for {topo.n_slots} slots ({topo.describe()})"
            )
        if len(st.digest_ordered) != topo.world_size or len(st.digest_set) != topo.world_size:
            raise StateError(f"state digests do not have one entry per rank (world_size={topo.world_size})")
        if any(x is not None and x < 0 for x in st.delivered) or any(b < 0 for b in st.base):
            raise StateError("state has negative counts")
        if st.epoch < 0:
            raise StateError(f"state epoch {st.epoch} is negative")
        return st


def _state_int(value: Any, name: str) -> int:
    """An integer field of a saved state; 160.5 (or "160", or true) is an edited or corrupt state, not 160."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)  # JSON tools that write every number as a float
    raise StateError(f"state field {name!r} is {value!r}, expected an integer")


def new_epoch_state(
    manifest_id: str,
    spec_id: str,
    seed: int,
    shuffle: bool,
    epoch: int,
    n_shards: int,
    topology: Topology,
    shard_order: str | None = None,
) -> CursorState:
    """Start-of-epoch state: nothing consumed. Full (every slot known), so any rank may save it.
    ``shard_order`` defaults to ``"block"`` when shuffling, else ``"sequential"`` (wdspq.epoch_order)."""
    W = topology.world_size
    order = shard_order if shard_order == BATCHES else epoch_order.check_order(
        shard_order or epoch_order.default_order(shuffle), shuffle)
    return CursorState(
        manifest_id=manifest_id,
        spec_id=spec_id,
        seed=int(seed),
        shuffle=bool(shuffle),
        epoch=int(epoch),
        topology=topology,
        base=[0] * int(n_shards),
        delivered=[0] * topology.n_slots,
        digest_ordered=[""] * W,
        digest_set=[ZERO_SET] * W,
        digest_carried=ZERO_SET,
        complete=False,
        shard_order=order,
        consumed=[],
    )


def _short(s: str) -> str:
    return s if len(s) <= 16 else s[:12] + "..."


def check_compatible(
    state: CursorState | Mapping[str, Any],
    manifest_id: str,
    spec_id: str,
    seed: int,
    shuffle: bool,
    n_shards: int,
    shard_order: str | None = None,
) -> CursorState:
    """Raise StateError naming every difference between the state and the stream; return the state.

    Epoch and topology may differ (the stream follows the state's epoch; another topology is an
    elastic resume). ``shard_order`` defaults to the stream's default for ``shuffle``.
    """
    st = CursorState.from_dict(state)  # type: ignore[arg-type]
    problems = []
    if st.manifest_id != manifest_id:
        problems.append(
            f"state was saved for manifest {_short(st.manifest_id)}, this stream reads {_short(manifest_id)}"
        )
    if st.spec_id != spec_id:
        problems.append(f"window spec {_short(st.spec_id)} in the state vs {_short(spec_id)} in this stream")
    if st.seed != seed:
        problems.append(f"seed {st.seed} in the state vs {seed} in this stream")
    if st.shuffle != bool(shuffle):
        problems.append(f"shuffle={st.shuffle} in the state vs shuffle={bool(shuffle)} in this stream")
    order = shard_order or epoch_order.default_order(shuffle)
    if st.shard_order != order:
        hint = ""
        if st.shard_order == "sequential":
            hint = (" (states of format 1, saved before per-epoch in-shard orders, read shards sequentially: "
                    "open the stream with shard_order='sequential' to resume one)")
        problems.append(f"shard_order={st.shard_order!r} in the state vs {order!r} in this stream{hint}")
    if len(st.base) != n_shards:
        problems.append(f"state covers {len(st.base)} shards, this stream has {n_shards}")
    if problems:
        raise StateError("loader state does not match this stream: " + "; ".join(problems))
    return st


def merge_states(states: Sequence[CursorState | Mapping[str, Any]]) -> dict[str, Any]:
    """Combine per-rank states (each knows its own slots) into one full state dict.

    Everything but the per-slot counts and per-rank digests must agree; a slot known by two states
    must have the same count. Raises StateError when they disagree or a rank is missing.
    """
    if not states:
        raise StateError("merge_states needs at least one state")
    sts = [CursorState.from_dict(s) for s in states]  # type: ignore[arg-type]
    first = sts[0].to_dict()
    shared = ("version", "manifest_id", "spec_id", "seed", "shuffle", "epoch", "topology", "shard_order", "base",
              "consumed")
    for i, s in enumerate(sts[1:], 1):
        d = s.to_dict()
        for k in shared:
            if d[k] != first[k]:
                a, b = first[k], d[k]
                if k in ("base", "consumed"):
                    a, b = "(one list)", "(another list)"
                raise StateError(
                    f"cannot merge states: {k} differs between state 0 ({a}) and state {i} ({b})"
                )
        if d["digest"]["carried"] != first["digest"]["carried"]:
            raise StateError(f"cannot merge states: carried set digest differs between state 0 and state {i}")

    def combine(name: str, lists: list[list[Any]]) -> list[Any]:
        out: list[Any] = [None] * len(lists[0])
        for i, lst in enumerate(lists):
            for j, v in enumerate(lst):
                if v is None:
                    continue
                if out[j] is not None and out[j] != v:
                    raise StateError(
                        f"cannot merge states: {name} {j} is {out[j]} in one state and {v} in state {i}"
                    )
                out[j] = v
        return out

    merged = CursorState(**{**sts[0].__dict__})
    merged.delivered = combine("slot", [s.delivered for s in sts])
    merged.digest_ordered = combine("ordered digest of rank", [s.digest_ordered for s in sts])
    merged.digest_set = combine("set digest of rank", [s.digest_set for s in sts])
    merged.complete = all(s.complete for s in sts)
    if not merged.is_full():
        known = sorted({r for s in sts for r in s.known_ranks()})
        missing = [r for r in range(merged.topology.world_size) if r not in known]
        raise StateError(f"cannot merge states: no state for rank(s) {missing} (have {known})")
    out = merged.to_dict()
    # what a stream adds to its states (a mixture names its sources, wdspq.stream.mixture; the block order names
    # its blocks): kept when every state has the same
    for key in STREAM_KEYS:
        extra = [s.get(key) if isinstance(s, Mapping) else None for s in states]
        if extra[0] is not None and all(e == extra[0] for e in extra):
            out[key] = extra[0]
    return out


def blocks_digest(blocks: Sequence[int]) -> str:
    """A short digest of every shard's in-shard block size (wdspq.epoch_order.shard_blocks): a block-order state
    names it, so a state read under another block rule is refused instead of continuing in another order."""
    return hashlib.sha256(",".join(str(int(b)) for b in blocks).encode()).hexdigest()[:16]
