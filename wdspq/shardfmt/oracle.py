"""The independent oracle of the tar layout: a shard walked with Python's own `tarfile`, for `wdspq verify`.

Deliberately written without shardfmt's writer and reader (`layout`, `index`, `read`): it parses the
shard as any tar tool would, member by member, so a bug in wdspq's own offset rules shows up as a
disagreement between this walk and the index instead of being shared by both sides of the check.
Only the member grouping (`<key>.<ext>`) is the format's; offsets and ends come from `tarfile`.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_BLOCK = 512  # a tar block (written out here on purpose: not shardfmt.layout's constant)


class TarWalkError(Exception):
    """The tar does not parse (tarfile's error, a truncated file, a read failure)."""


@dataclass
class TarMember:
    """One member as `tarfile` sees it: `key` and `ext` split at the first dot of its name."""

    name: str
    key: str
    ext: str
    offset: int  # its header's byte offset
    end: int  # where its payload, padded to a block, ends
    data: bytes | None  # its payload; None when it is not a regular file


def tar_members(fileobj: Any) -> Iterator[TarMember]:
    """Each member of the tar read sequentially from `fileobj` (a stream: read once, never seeked);
    TarWalkError when it stops parsing."""
    try:
        tar = tarfile.open(fileobj=fileobj, mode="r|")  # type: ignore[call-overload]
        for ti in tar:
            key, _, ext = ti.name.partition(".")
            data = tar.extractfile(ti).read() if ti.isfile() else None  # type: ignore[union-attr]
            end = ti.offset_data + ti.size + (-ti.size % _BLOCK)
            yield TarMember(ti.name, key, ext, ti.offset, end, data)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise TarWalkError(f"{type(e).__name__}: {e}") from e
