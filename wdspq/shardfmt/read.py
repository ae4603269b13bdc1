"""Reading a run of samples of one shard: one ranged open, one read per sample, decode to records."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..errors import ShardError, WdspqError
from .encoding import SampleCodec
from .layout import map_spans, mmap_enabled, parse_members, read_spans, single_member
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
    try:
        spans = manifest.index(shard)[start:stop]
    except ShardError:
        manifest.check_current(shard)  # an index of another export: say that, not "checksum mismatch"
        raise
    if len(spans) != stop - start:
        raise ShardError(f"{url}: samples {start}..{stop - 1} requested, the shard has {len(manifest.index(shard))}")
    begin, end = int(spans[0, 0]), int(spans[-1, 0] + spans[-1, 1])
    try:
        f = manifest.storage.open_read(name, begin, end)
    except WdspqError as e:
        manifest.check_current(shard)
        raise ShardError(f"{url}: cannot open shard: {e}") from None
    try:
        manifest.check_current(shard)  # the bytes just opened are this export's (Manifest.check_current)
    except BaseException:
        f.close()
        raise
    suffix = None if codec.coded else ("." + codec.record_member).encode()  # one member per sample
    raw = getattr(f, "raw", f)
    spans_of = map_spans if hasattr(raw, "local_file") and mmap_enabled() else read_spans
    try:
        for i, buf in enumerate(spans_of(raw, url, spans, start), start):
            payload = single_member(buf, suffix) if suffix is not None else None
            if payload is not None:  # the common case: one member, as this codec writes it
                try:
                    rec = codec.record_from(payload, "")  # the message is built only for a bad sample
                except ShardError:
                    rec = codec.record_from(payload, f"{url}, sample {i}, member {codec.record_member!r}")
                yield rec
                continue
            where = f"{url}, sample {i}"
            _, members = parse_members(buf, where, int(spans[i - start, 0]))
            yield codec.record(members, where)
    finally:
        f.close()


def read_run(
    manifest: Manifest, shard: int, start: int, stop: int, codec: SampleCodec | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Samples `start .. stop-1` of one shard as dicts of writable arrays (see `read_records`)."""
    codec = codec or manifest.codec()
    for rec in read_records(manifest, shard, start, stop, codec):
        yield codec.view(rec)
