"""Block-order reads of a shared-frames shard: a block's bytes read at once, each record built when it is
handed out (docs/shards.md "Shared frames"); and where a window is in such an export (`locate_window`).

Why: the block order hands a block's samples out in another order than it reads them. Building every
record of a block before its first sample is handed out (a record is ~170 KB on the sim table, a block
hundreds of samples) made one batch in a block's worth carry the block's whole decode, so DataLoader
workers, which hand batches over in turn, waited for each other; and the records held per block were
memory faulted in afresh for every block. Here a block's runs are read as `read_shared` reads them (one
ranged read per run of consecutive samples, its segment's frame pack read on its own when the run starts
inside a segment: R5), and only the sample members and the raw packs are held; a pack is decompressed
when its first sample is built and dropped after its last one of the block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ShardError, WdspqError
from .shared import (
    TAR_BLOCK,
    SharedFramesCodec,
    _pack_of,
    _read_range,
    _run_begin,
    _sample_record,
    pack_first_window,
)


class SharedSamples:
    """Samples of one shared-frames shard taken in any order (`take`), for the block order's reads; the
    counterpart of `read.MappedSamples` (same `take` / `close`), on any storage."""

    def __init__(self, manifest: Any, shard: int, codec: SharedFramesCodec) -> None:
        self.manifest, self.shard, self.codec = manifest, shard, codec
        self.url = manifest.storage.url(manifest.shards[shard]["name"])

    def take(self, positions: np.ndarray) -> SharedRecords:
        """The records of `positions` (ascending), each built when indexed (`SharedRecords`); read errors
        raise here, a bad sample's or pack's when its sample is indexed."""
        positions = np.asarray(positions, dtype=np.int64)
        members: list[memoryview] = []
        at: list[int] = []  # each member's byte offset (for messages)
        pack_at: list[int] = []
        packs: dict[int, memoryview] = {}
        cut = np.flatnonzero(np.diff(positions) != 1) + 1
        for run in np.split(positions, cut) if len(positions) else []:
            a, b = int(run[0]), int(run[-1]) + 1
            spans = self.manifest.sample_spans(self.shard, a, b)
            off, ln, po, pl = (spans[:, i].tolist() for i in range(4))
            inside, begin = _run_begin(off[0], po[0], pl[0])
            if inside and po[0] not in packs:
                packs[po[0]] = self._read(po[0], po[0] + pl[0], f"frame pack of sample {a}")
            buf = self._read(begin, off[-1] + ln[-1], f"samples {a}..{b - 1}")
            for k in range(len(off)):
                if po[k] not in packs:
                    packs[po[k]] = buf[po[k] - begin : po[k] - begin + pl[k]]
                members.append(buf[off[k] - begin : off[k] - begin + ln[k]])
                at.append(off[k])
                pack_at.append(po[k])
        return SharedRecords(self, members, at, positions.tolist(), pack_at, packs)

    def _read(self, begin: int, end: int, what: str) -> memoryview:
        return _read_range(self.manifest, self.shard, begin, end, self.url, what)

    def close(self) -> None:
        """Nothing stays open between takes."""


class SharedRecords(Sequence):
    """The records of some samples of a shared-frames shard, each built when it is indexed (see the module
    doc). A pack is decoded at its first sample's index and dropped once each of its samples here has been
    indexed; indexing a sample again decodes its pack again if it was dropped."""

    def __init__(self, src: SharedSamples, members: list[memoryview], at: list[int], samples: list[int],
                 pack_at: list[int], packs: dict[int, memoryview]) -> None:
        self._src, self._members, self._at, self._samples = src, members, at, samples
        self._pack_at, self._packs = pack_at, packs
        self._decoded: dict[int, dict[str, np.ndarray]] = {}
        self._left: dict[int, int] = {}
        for p in pack_at:
            self._left[p] = self._left.get(p, 0) + 1

    def __len__(self) -> int:
        return len(self._members)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self)))]
        src, i, p = self._src, self._samples[k], self._pack_at[k]
        pack = self._decoded.get(p)
        if pack is None:
            pack = self._decoded[p] = _pack_of(src.codec, self._packs[p], src.url, i, p)
        self._left[p] -= 1
        if self._left[p] <= 0:
            self._decoded.pop(p, None)
        return _sample_record(src.codec, self._members[k], pack, src.url, i, self._at[k])

    def sample(self, k: int) -> int:
        """The sample number (position in the shard) of entry `k`."""
        return self._samples[k]


def segment_first(spans: np.ndarray, p: int, floor: int = 0) -> int | None:
    """Position of the first sample of sample `p`'s segment in a shared-frames shard index (rows: offset,
    length, pack offset, pack length), or None when it lies before `floor`: a segment's samples are
    consecutive and share their pack, and the first one follows the pack at once (`_run_begin`)."""
    a = p
    while a > floor and spans[a - 1, 2] == spans[p, 2]:
        a -= 1
    inside, _ = _run_begin(int(spans[a, 0]), int(spans[a, 2]), int(spans[a, 3]))
    return None if inside else a


def locate_window(manifest: Any, window: int) -> tuple[int, int]:
    """(shard, position) of `window` in a shared-frames export (`wdspq show`): a segment's samples follow its
    pack in ascending, consecutive windows from the one the pack's key names, so each pack's tar header (one
    512-byte read) places its segment's samples; the caller reads that one sample and checks its window."""
    for shard, entry in enumerate(manifest.shards):
        url = manifest.storage.url(entry["name"])
        packs, first, count = np.unique(manifest.index(shard)[:, 2], return_index=True, return_counts=True)
        for at, pos, n in zip(packs.tolist(), first.tolist(), count.tolist()):
            with manifest.storage.open_read(entry["name"], at, at + TAR_BLOCK) as f:
                name = f.read(100).split(b"\0", 1)[0].decode("ascii", "replace")
            start = pack_first_window(name)
            if start is None:
                raise ShardError(f"{url}: the member at byte {at} (the frame pack of sample {pos}) is {name!r}, "
                                 "not a frame pack: the index or the shard is corrupt")
            if start <= window < start + n:
                return shard, pos + window - start
    raise WdspqError(f"{manifest.url}: no frame pack holds window {window}")
