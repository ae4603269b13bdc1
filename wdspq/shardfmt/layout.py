"""Tar layout of a shard: the bytes of one sample, the end of the archive, and reading samples back.

A sample is a contiguous run of ustar members `<key>.<member>` (fixed mtime 0, mode 0444, owner
"wdspq"), each padded to 512 bytes, so a sample's bytes do not depend on where it lands in a shard:
the exporter encodes samples once (in parallel) and a shard is their concatenation plus two zero
blocks. Readers seek to a sample's offset from the index (a Range request on S3, R5) and read its
span with one read; nothing else in wdspq knows an offset rule.
"""

from __future__ import annotations

import mmap
import os
import tarfile
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import ShardError, WdspqError

TAR_BLOCK = 512
RECORD_SIZE = 20 * TAR_BLOCK  # tar's default record: the archive is padded to a multiple of it


def sample_tar(key: str, members: Sequence[tuple[str, bytes]]) -> bytes:
    """The tar bytes of one sample: a ustar header and padded payload per member, in the given order."""
    parts: list[bytes] = []
    for name, data in members:
        ti = tarfile.TarInfo(f"{key}.{name}")
        ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = len(data), 0, 0o444, "wdspq", "wdspq"
        try:
            parts.append(ti.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict"))
        except ValueError as e:
            raise ShardError(f"member {ti.name!r}: cannot be named in a tar ({e}); use shorter stream names") from None
        parts.append(data)
        parts.append(bytes(-len(data) % TAR_BLOCK))
    return b"".join(parts)


def member_end(data_offset: int, size: int) -> int:
    """Where a member whose payload starts at `data_offset` ends: its payload padded to 512 bytes."""
    return data_offset + size + (-size % TAR_BLOCK)


def end_of_archive(size: int) -> bytes:
    """What closes a tar of `size` bytes: two zero blocks, then zeros up to a multiple of RECORD_SIZE."""
    end = size + 2 * TAR_BLOCK
    return bytes(2 * TAR_BLOCK + (-end % RECORD_SIZE))


def parse_members(buf: memoryview, where: str, first: int = 0) -> tuple[str, dict[str, memoryview]]:
    """One sample's span -> (key, {member name without the key: payload view}).

    Headers are checked quickly (magic, type, size); one that fails goes through
    `tarfile.TarInfo.frombuf` for an exact error. Payload integrity is the sha256's job (`verify`).
    """
    pos, key, members = 0, None, {}
    n = len(buf)
    while pos < n:
        h = buf[pos : pos + TAR_BLOCK]
        if len(h) < TAR_BLOCK:
            raise ShardError(f"{where}: the span ends inside a tar header (byte {first + pos})")
        try:
            if h[257:263] != b"ustar\x00" or h[156] not in (0x30, 0x00) or h[345] != 0:
                raise ValueError
            size = int(h[124:135].tobytes(), 8)
            name = h[:100].tobytes().rstrip(b"\x00").decode("utf-8", "surrogateescape")
        except ValueError:
            try:
                info = tarfile.TarInfo.frombuf(bytes(h), "utf-8", "surrogateescape")
            except tarfile.HeaderError as e:
                raise ShardError(f"{where}: bad tar header at byte {first + pos}: {e}") from None
            if not info.isfile():
                raise ShardError(f"{where}: member {info.name!r} is not a regular file") from None
            size, name = info.size, info.name
        k, dot, ext = name.partition(".")
        if not dot:
            raise ShardError(f"{where}: member {name!r} has no extension")
        if key is None:
            key = k
        elif k != key:
            raise ShardError(f"{where}: member {name!r} belongs to another sample than {key!r}")
        start = pos + TAR_BLOCK
        if start + size > n:
            raise ShardError(f"{where}: member {name!r} runs past the sample's span ({size} bytes at byte {first + start})")
        members[ext] = buf[start : start + size]
        pos = start + size + (-size % TAR_BLOCK)
    if key is None:
        raise ShardError(f"{where}: empty sample span")
    return key, members


def single_member(buf: memoryview, suffix: bytes) -> memoryview | None:
    """The payload of a span that is exactly one regular ustar member named `*<suffix>`, checked with a
    few byte comparisons (the common case); None otherwise, and `parse_members` decides."""
    if len(buf) < 2 * TAR_BLOCK or buf[257:263] != b"ustar\x00" or buf[156] != 0x30:
        return None
    try:
        size = int(buf[124:135].tobytes(), 8)
    except ValueError:
        return None
    if TAR_BLOCK + size + (-size % TAR_BLOCK) != len(buf) or not buf[:100].tobytes().rstrip(b"\x00").endswith(suffix):
        return None
    return buf[TAR_BLOCK : TAR_BLOCK + size]


def _readinto_full(raw: Any, mv: memoryview) -> int:
    """Fill `mv` from a raw stream (which may return short reads); the count read (less only at EOF)."""
    got = 0
    while got < len(mv):
        n = raw.readinto(mv[got:])
        if not n:
            break
        got += n
    return got


BLOCK_BYTES = 0  # one sample per read: fresh small buffers come from the heap (no page faults)
MAP_BYTES = 8 * 2**20  # a local shard is mapped in blocks of about this size (see map_spans)
MAX_LIVE_MAPS = 64  # mapped blocks alive at once in a process (each holds a file descriptor before Python 3.13)
_live_maps = [0]


def mmap_enabled() -> bool:
    """Local shards are read through mappings unless WDSPQ_MMAP=0 (e.g. a network file system)."""
    return os.environ.get("WDSPQ_MMAP", "1") != "0"


def map_slot_free() -> bool:
    """Whether another mapping may be made (fewer than MAX_LIVE_MAPS alive in this process)."""
    return _live_maps[0] < MAX_LIVE_MAPS


def _map_closed() -> None:
    _live_maps[0] -= 1


def map_spans(raw: Any, url: str, spans: np.ndarray, start: int, samples: Sequence[int] | None = None) -> Iterator[memoryview]:
    """Each sample's span as a view of a private (copy-on-write) mapping of the local shard: no copy.

    Samples close to each other share a mapping of about MAP_BYTES, which lives as long as any view of it,
    so a kept sample keeps only its block. Writes to a view stay private. Past MAX_LIVE_MAPS live blocks
    (kept samples) and on a truncated file, samples are read into their own buffers (`read_spans`) instead:
    a mapping is never made past the file's end, where touching it would kill the process. `spans` are
    ascending; with `samples` (their sample numbers, else ``start, start + 1, ...``) they may leave gaps,
    which are neither mapped into a view nor counted in ``raw.bytes_read``."""
    fd, end = raw.local_file()
    offs, lens = spans[:, 0].tolist(), spans[:, 1].tolist()
    nums = list(range(start, start + len(offs))) if samples is None else [int(x) for x in samples]
    n, i = len(offs), 0
    size = os.fstat(fd).st_size
    short = offs[-1] + lens[-1] > min(size, end if end is not None else size)  # the file is cut: read, and fail there
    while i < n:
        if short or _live_maps[0] >= MAX_LIVE_MAPS:
            while i < n:  # each run of consecutive samples from its offset
                j = i + 1
                while j < n and nums[j] == nums[j - 1] + 1:
                    j += 1
                raw.seek_to(offs[i])
                yield from read_spans(raw, url, spans[i:j], nums[i])
                i = j
            return
        j = i + 1
        while j < n and offs[j] + lens[j] - offs[i] <= MAP_BYTES:
            j += 1
        lo, mv = map_bytes(fd, offs[i], offs[j - 1] + lens[j - 1], f"{url}, sample {nums[i]}")
        raw.bytes_read += sum(lens[i:j])
        for k in range(i, j):
            yield mv[offs[k] - lo : offs[k] - lo + lens[k]]
        i = j


def map_bytes(fd: int, begin: int, end: int, where: str) -> tuple[int, memoryview]:
    """``(lo, view)``: a private (copy-on-write) mapping of bytes ``lo .. end-1`` of the file (``lo``: ``begin``
    rounded down to the mapping granularity), alive while any view of it is, counted in the live maps.
    The caller checks that ``end`` is within the file and that fewer than MAX_LIVE_MAPS are alive."""
    lo = begin - begin % mmap.ALLOCATIONGRANULARITY
    try:
        m = mmap.mmap(fd, end - lo, access=mmap.ACCESS_COPY, offset=lo)
    except (OSError, ValueError) as e:
        raise ShardError(f"{where}: cannot map bytes {lo}..{end}: {e}") from None
    _live_maps[0] += 1
    weakref.finalize(m, _map_closed)
    return lo, memoryview(m)  # the views keep the mapping alive


def read_spans(f: Any, url: str, spans: np.ndarray, start: int) -> Iterator[memoryview]:
    """Each sample's span, read in blocks of consecutive samples (`f` is at `spans[0]`'s offset).

    One raw read fills an uninitialised block of up to BLOCK_BYTES (at least one sample); samples are
    writable views of it. A block is never reused, so a caller may keep views (a kept sample keeps its
    block alive)."""
    raw = getattr(f, "raw", f)  # bypass the read-ahead buffer: blocks are large, a second copy costs
    offs, lens = spans[:, 0].tolist(), spans[:, 1].tolist()
    n, i = len(offs), 0
    while i < n:
        j, size = i + 1, lens[i]
        while j < n and size + lens[j] <= BLOCK_BYTES:
            size += lens[j]
            j += 1
        block = memoryview(bytearray(size))
        try:
            got = _readinto_full(raw, block)
        except WdspqError:
            raise
        except Exception as e:
            raise ShardError(f"{url}, sample {start + i}: read failed at byte {offs[i]}: {type(e).__name__}: {e}") from None
        pos = 0
        for k in range(i, j):
            end = pos + lens[k]
            if end > got:
                raise ShardError(
                    f"{url}: shard is truncated or corrupt: sample {start + k} (byte offset {offs[k]}) has "
                    f"{max(got - pos, 0)} of its {lens[k]} bytes"
                )
            yield block[pos:end]
            pos = end
        i = j
