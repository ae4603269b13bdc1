"""Reading samples of one shard: a run with one ranged open (one read or mapping per sample), or, on local
shards, any positions of several runs kept open (`MappedSamples`); decode to records."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import ShardError
from ..storage.local import LocalStorage
from .encoding import SampleCodec
from .layout import (
    map_bytes,
    map_slot_free,
    map_spans,
    mmap_enabled,
    parse_members,
    read_spans,
    single_member,
)
from .manifest import Manifest


def read_records(
    manifest: Manifest, shard: int, start: int, stop: int, codec: SampleCodec | None = None
) -> Iterator[memoryview]:
    """Record bytes (layout `codec.dtype`) of samples `start .. stop-1` of one shard, in order.

    Opens exactly the byte range of those samples from the shard's index (a Range request on S3), so
    skipped samples are never read (R5); a local shard is mapped rather than read (`map_spans`). A
    yielded view may be read-only (copy before writing) and stays valid as long as it is referenced.
    Errors are ShardErrors naming shard, sample, member.
    """
    if stop <= start:
        return
    codec = codec or manifest.codec()
    if not isinstance(codec, SampleCodec):  # shared frames: each segment's pack, then its samples
        from .shared import read_shared

        yield from read_shared(manifest, shard, start, stop, codec)
        return
    name = manifest.shards[shard]["name"]
    url = manifest.storage.url(name)
    spans = manifest.sample_spans(shard, start, stop)
    begin, end = int(spans[0, 0]), int(spans[-1, 0] + spans[-1, 1])
    f = manifest.open_checked(shard, begin, end)
    raw = getattr(f, "raw", f)
    spans_of = map_spans if hasattr(raw, "local_file") and mmap_enabled() else read_spans
    try:
        yield from _records(spans_of(raw, url, spans, start), range(start, stop), spans, codec, url)
    finally:
        f.close()


def _records(bufs: Iterator[memoryview], samples: Any, spans: np.ndarray, codec: SampleCodec, url: str) -> Iterator[memoryview]:
    """Each sample span's record bytes (`samples`: their sample numbers, for messages)."""
    suffix = _suffix(codec)
    for k, (i, buf) in enumerate(zip(samples, bufs)):
        yield _record(buf, i, int(spans[k, 0]), codec, url, suffix)


def _suffix(codec: SampleCodec) -> bytes | None:
    """The record member's name suffix when a sample is one member (as this codec writes it), else None."""
    return None if codec.coded else ("." + codec.record_member).encode()


def _record(buf: memoryview, i: int, offset: int, codec: SampleCodec, url: str, suffix: bytes | None) -> memoryview:
    """One sample's record bytes from its span's bytes `buf` (sample `i`, at byte `offset`, for messages)."""
    payload = single_member(buf, suffix) if suffix is not None else None
    if payload is not None:  # the common case: one member, as this codec writes it
        try:
            return codec.record_from(payload, "")  # the message is built only for a bad sample
        except ShardError:
            return codec.record_from(payload, f"{url}, sample {i}, member {codec.record_member!r}")
    where = f"{url}, sample {i}"
    _, members = parse_members(buf, where, offset)
    return codec.record(members, where)


class MappedRecords(Sequence):
    """The records of some mapped samples, each decoded when it is indexed (`MappedSamples.take`).

    Why: a block order hands a block's samples out in another order than it reads them; holding the
    mapped bytes and decoding each record when it is handed out spreads a block's decode over its samples
    (no batch carries a whole block's decode, which made DataLoader workers wait for each other) and keeps
    one decoded record alive at a time instead of a block's (whose memory was faulted in afresh per block).
    An index decodes again each time; a bad sample raises when indexed."""

    def __init__(self, bufs: list[memoryview], samples: list[int], offsets: list[int], codec: SampleCodec, url: str) -> None:
        self._bufs, self._samples, self._offsets = bufs, samples, offsets
        self._codec, self._url, self._suffix = codec, url, _suffix(codec)

    def __len__(self) -> int:
        return len(self._bufs)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self)))]
        return _record(self._bufs[k], self._samples[k], self._offsets[k], self._codec, self._url, self._suffix)

    def sample(self, k: int) -> int:
        """The sample number (position in the shard) of entry `k`."""
        return self._samples[k]


class MappedSamples:
    """Samples of one local shard taken in any order by mapping, for the block order's reads.

    Built with the sorted sample positions a read will need (`needed`): each run of consecutive ones is
    opened once, when first used (one `open_read` of exactly its bytes and one `check_current`, so a
    range never covers a sample outside `needed`, R5), and `take(positions)` gives views of the positions
    asked for: a run of up to RUN_MAP_BYTES is mapped once for all the blocks that take from it (a kept
    sample then keeps that mapping: address space, not memory), a longer one per ~MAP_BYTES (`map_spans`).
    Only the samples taken count in the readers' ``bytes_read``. Errors raise (the caller reads again
    through its error policy). `create` gives None where mapping does not apply
    (storage other than local files, WDSPQ_MMAP=0, shared-frames shards)."""

    MAX_OPEN = 8  # open runs kept at once; the least recently used is closed (and reopened if needed again)
    RUN_MAP_BYTES = 256 * 2**20  # a run up to this size is mapped once for all its blocks (address space only)

    def __init__(self, manifest: Manifest, shard: int, needed: np.ndarray, codec: SampleCodec) -> None:
        self.manifest, self.shard, self.codec = manifest, shard, codec
        self.name = manifest.shards[shard]["name"]
        self.url = manifest.storage.url(self.name)
        cut = np.flatnonzero(np.diff(needed) != 1) + 1
        self._starts = needed[np.concatenate([[0], cut])].astype(np.int64)
        self._stops = needed[np.concatenate([cut - 1, [len(needed) - 1]])].astype(np.int64) + 1
        self._open: dict[int, Any] = {}  # run number -> open reader (insertion order = use order)
        self._mapped: dict[int, tuple[int, memoryview]] = {}  # run number -> (first byte, view of its mapping)

    @classmethod
    def create(cls, manifest: Manifest, shard: int, needed: np.ndarray, codec: SampleCodec | None = None) -> MappedSamples | None:
        """For the sorted sample positions `needed`, or None where mapping does not apply."""
        codec = codec or manifest.codec()
        if not isinstance(manifest.storage, LocalStorage) or not mmap_enabled() or not isinstance(codec, SampleCodec) or len(needed) == 0:
            return None
        return cls(manifest, shard, np.asarray(needed, dtype=np.int64), codec)

    def _reader(self, run: int) -> Any:
        f = self._open.pop(run, None)
        if f is None:
            if len(self._open) >= self.MAX_OPEN:
                self._open.pop(next(iter(self._open))).close()
            spans = self.manifest.index(self.shard)
            a, b = int(self._starts[run]), int(self._stops[run])
            f = self.manifest.open_checked(self.shard, int(spans[a, 0]), int(spans[b - 1, 0] + spans[b - 1, 1]))
        self._open[run] = f  # most recently used last
        return f

    def take(self, positions: np.ndarray) -> MappedRecords:
        """Record bytes of `positions` (ascending, each in `needed`), in that order, each decoded when indexed
        (`MappedRecords`): opening and mapping errors raise here, a bad sample's when it is indexed."""
        spans = self.manifest.index(self.shard)[positions]
        run_of = np.searchsorted(self._starts, positions, side="right") - 1
        bounds = [0, *(np.flatnonzero(np.diff(run_of)) + 1).tolist(), len(positions)]
        bufs: list[memoryview] = []
        for lo, hi in zip(bounds, bounds[1:]):
            run = int(run_of[lo])
            f = self._reader(run)
            part = positions[lo:hi]
            mapped = self._mapped.get(run) or self._map_run(run, f.raw)
            if mapped is not None:  # views of the run's one mapping
                base, mv = mapped
                offs, lens = spans[lo:hi, 0].tolist(), spans[lo:hi, 1].tolist()
                f.raw.bytes_read += sum(lens)
                bufs.extend(mv[o - base : o - base + n] for o, n in zip(offs, lens))
            else:
                bufs.extend(map_spans(f.raw, self.url, spans[lo:hi], int(part[0]), part))
        return MappedRecords(bufs, positions.tolist(), spans[:, 0].tolist(), self.codec, self.url)

    def _map_run(self, run: int, raw: Any) -> tuple[int, memoryview] | None:
        """One mapping of a whole open run, reused by every block that takes from it, when the run is at most
        RUN_MAP_BYTES, within the file and a live map is free; else None (`map_spans`, per ~MAP_BYTES)."""
        fd, end = raw.local_file()
        spans = self.manifest.index(self.shard)
        a, b = int(self._starts[run]), int(self._stops[run])
        begin, stop = int(spans[a, 0]), int(spans[b - 1, 0] + spans[b - 1, 1])
        if stop - begin > self.RUN_MAP_BYTES or stop > min(end, os.fstat(fd).st_size) or not map_slot_free():
            return None
        self._mapped[run] = map_bytes(fd, begin, stop, f"{self.url}, samples {a}..{b - 1}")
        return self._mapped[run]

    def close(self) -> None:
        """Close the open ranges and drop the run mappings (the views handed out stay valid: they hold them)."""
        self._mapped.clear()
        while self._open:
            self._open.popitem()[1].close()


def read_run(
    manifest: Manifest, shard: int, start: int, stop: int, codec: SampleCodec | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Samples `start .. stop-1` of one shard as dicts of writable arrays (see `read_records`)."""
    codec = codec or manifest.codec()
    for rec in read_records(manifest, shard, start, stop, codec):
        yield codec.view(rec)
