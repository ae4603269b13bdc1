"""Shard cursor: the pure planning and state logic behind the stream's exact and elastic resume.

No file I/O, no torch: every function here is a pure function of the manifest's shard sizes, the
seed, the epoch, the topology and the saved counts, so every rank and worker computes the same plan
without communicating. The guarantees (R1-R7), the vocabulary and the normative rules are in
docs/cursor.md. One job per module: `topology` (topology, epoch shard order), `interleave` (one slot's
pieces), `plan` (one segment's plan), `digest` (audit digests), `state` (`CursorState`, merging),
`resume` (continuing a state, `RankCursor`).
"""

from .digest import (
    PAD_INDEX,
    ZERO_SET,
    RankDigests,
    combine_set_digests,
    mix64,
    set_digest_of,
    update_digests,
)
from .interleave import CHUNK, Piece, _Interleaver, interleave_reference
from .plan import Plan
from .resume import RankCursor, Resume, resume
from .state import STATE_VERSION, CursorState, check_compatible, merge_states, new_epoch_state
from .topology import EVEN_MODES, Topology, epoch_shard_order

__all__ = [
    "CHUNK",
    "EVEN_MODES",
    "PAD_INDEX",
    "STATE_VERSION",
    "ZERO_SET",
    "CursorState",
    "Piece",
    "Plan",
    "RankCursor",
    "RankDigests",
    "Resume",
    "Topology",
    "_Interleaver",
    "check_compatible",
    "combine_set_digests",
    "epoch_shard_order",
    "interleave_reference",
    "merge_states",
    "mix64",
    "new_epoch_state",
    "resume",
    "set_digest_of",
    "update_digests",
]
