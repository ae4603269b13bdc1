"""Epoch order inside shards, and pieces: pure functions behind the cursor's plan (README "Epoch order").

No file I/O. The cursor plans in *ordinal* space: position ``q`` of a shard means "the ``q``-th sample of
this shard in this epoch's order", so the consumed part of a shard is always a set of ordinal ranges (a
prefix when the shard is read by one slot). The stream turns an ordinal into a sample position with
`in_shard_order`, and reads a stretch of ordinals with `read_in_order`.

Orders (``shard_order``)
------------------------
* ``"block"`` (the default when shuffling): the shard is cut into chunks of consecutive samples, up to
  CHUNKS of which make a block of about BLOCK_BYTES (`block_size`, from the manifest's shard bytes and
  sample count). Each epoch the chunks are permuted and dealt to blocks, each chunk is rotated, and a
  block's samples are handed out row by row across its chunks (`in_shard_order`): block membership and
  batch-mates change every epoch whatever the sample size. All of it is drawn from
  ``np.random.default_rng([ORDER_TAG, seed, epoch, shard])``, a pure function of (seed, epoch, shard).
  A block is read as one ranged read per chunk (Range GETs on S3; on a local shard the chunks are mapped
  in one call from runs of needed samples opened once each, `read_in_order`'s ``mapped``) and held while
  its samples are handed out. Unconsumed ranges are cut into pieces (`split_ranges`), on block boundaries
  where they can, so that every slot gets work.
* ``"sequential"``: the version 1 order: every shard read front to back, whole shards as pieces (with
  fewer shards than slots some workers idle). States saved before format 2 have this order.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from .errors import ExportChangedError, StateError, WdspqError

ORDERS = ("block", "sequential")
BLOCK_BYTES = 8 * 2**20  # about one mapped block of a local shard (shardfmt.layout.MAP_BYTES)
CHUNKS = 16  # chunks per block at most: a block is read as CHUNKS ranged reads of ~BLOCK_BYTES / CHUNKS
ORDER_TAG = 0x0B10C5  # first word of the in-shard generator's seed: its stream differs from any other use


def default_order(shuffle: bool) -> str:
    """``"block"`` when shuffling, else ``"sequential"`` (canonical order everywhere)."""
    return "block" if shuffle else "sequential"


def check_order(shard_order: str, shuffle: bool) -> str:
    """Validate a ``shard_order`` against ``shuffle``; returns it."""
    if shard_order not in ORDERS:
        raise WdspqError(f"shard_order must be one of {ORDERS}, got {shard_order!r}")
    if shard_order == "block" and not shuffle:
        raise WdspqError("shard_order='block' shuffles inside shards: it needs shuffle=True")
    return shard_order


def block_size(n_samples: int, shard_bytes: int | None, segment: int = 0) -> int:
    """Samples per ordinal block of a shard: the shard cut into ``round(bytes / BLOCK_BYTES)`` blocks (at least
    one) of about ``g`` samples, rounded to whole chunks (`block_layout`). Unknown bytes: one block.

    ``segment`` (shared-frames shards: windows per frame pack, runs of one episode) makes every chunk a
    whole number of segments, at least one (so a block may have more samples than the shard). The
    exporter writes a shard's full segments first, so chunks hold whole segments: consecutive ordinals come
    from different segments (a batch mixes as many episodes as with per-sample shards of random windows),
    and a full segment's pack is read and decoded by one chunk only."""
    n = int(n_samples)
    if n <= 0:
        return 1
    blocks = max(1, round(int(shard_bytes or 0) / BLOCK_BYTES))
    g = -(-n // blocks)
    if segment > 0:  # chunks of a whole number of segments, at least one: CHUNKS such chunks a block
        g = CHUNKS * int(segment) * max(1, round(-(-g // CHUNKS) / int(segment)))
    c, k = block_layout(g)
    return c * k


def shard_blocks(manifest: Any) -> list[int]:
    """`block_size` of every shard of a manifest (its ``shards`` entries; the segment of a shared-frames
    encoding): what the stream, the mixture stream and every plan that must agree with them use."""
    enc = getattr(manifest, "data", {}).get("encoding", {})
    segment = int(enc.get("segment", 0)) if enc.get("layout") == "shared-frames" else 0
    return [block_size(int(e["samples"]), e.get("bytes"), segment) for e in manifest.shards]


def block_layout(block: int) -> tuple[int, int]:
    """``(c, k)``: a block of about ``block`` samples is ``k <= CHUNKS`` chunks of ``c`` consecutive samples
    (``c = ceil(block / CHUNKS)``, ``k = ceil(block / c)``; ``block_size``'s values give back themselves)."""
    g = max(1, int(block))
    c = -(-g // CHUNKS)
    return c, -(-g // c)


def in_shard_order(seed: int, epoch: int, shard: int, n_samples: int, block: int, shard_order: str) -> np.ndarray:
    """``perm[q]`` = sample position read at ordinal ``q`` of the shard in this epoch (int64, a permutation).

    Block order: the shard's full chunks of ``c`` consecutive samples (`block_layout`) are permuted and dealt
    ``k`` to an ordinal block of ``k * c`` ordinals (the leftover chunks and the shard's last ``n % c``
    samples make the last, shorter block). Each chunk starts at a random sample of itself (rotated), and a
    block's ordinals go row by row across its chunks (ordinal ``t`` of a block is row ``t // k`` of chunk
    ``t % k``). So consecutive samples come from different chunks, chunks meet in new blocks every epoch,
    and any stretch of a block's ordinals is at most two runs of consecutive samples per chunk."""
    n = int(n_samples)
    if shard_order == "sequential" or n <= 1:
        return np.arange(n, dtype=np.int64)
    if seed < 0 or epoch < 0:
        raise WdspqError(f"seed and epoch must be >= 0 to shuffle, got seed={seed}, epoch={epoch}")
    rng = np.random.default_rng([ORDER_TAG, int(seed), int(epoch), int(shard)])
    c, k = block_layout(block)
    nc = n // c
    rows = np.arange(c, dtype=np.int64)
    cols = rng.permutation(nc).astype(np.int64)[:, None] * c + (rows[None, :] + rng.integers(0, c, (nc, 1))) % c
    full = nc // k
    head = cols[: full * k].reshape(full, k, c).transpose(0, 2, 1).reshape(-1)
    grid = np.full((nc - full * k + 1, c), -1, dtype=np.int64)
    grid[:-1] = cols[full * k :]
    r = n - nc * c  # the shard's last samples, a short chunk placed among the last block's chunks
    grid[-1, :r] = nc * c + (rows[:r] + int(rng.integers(0, max(1, r)))) % max(1, r)
    tail = grid[rng.permutation(len(grid))].T.reshape(-1)
    return np.concatenate([head, tail[tail >= 0]])


def read_in_order(
    run: Callable[[int, int], Iterator[Any]], perm: np.ndarray, block: int, q0: int, q1: int, mapped: Any = None
) -> Iterator[Any]:
    """Samples at ordinals ``q0 .. q1-1``, in order. ``run(a, b)`` reads sample positions ``a .. b-1``
    (one ranged read). Per ordinal block, the positions it needs are read as runs of consecutive
    positions (a whole block: one read per chunk, fewer where chunks adjoin; a stretch of a block: at most
    two per chunk; never a sample outside ``q0 .. q1-1``, R5), held, and yielded in order. An identity
    order streams one run.

    ``mapped`` (optional, a local shard's `shardfmt.read.MappedSamples` for the positions of ``q0 .. q1-1``)
    takes a block's positions in one call from ranges opened once, instead of one ``run`` per chunk, and
    each record is decoded when it is yielded (so a block's decode is spread over its samples). Any error
    of the take but an export changed under the reader drops it: the block and the rest are read again
    through ``run`` (and its error policy); a sample that does not decode is read again alone through
    ``run``. It is closed when this generator ends."""
    if q1 <= q0:
        return
    part = perm[q0:q1]
    if part[-1] - part[0] == q1 - q0 - 1 and np.array_equal(part, np.arange(part[0], part[0] + q1 - q0)):
        yield from run(int(part[0]), int(part[0]) + q1 - q0)
        return
    c, k = block_layout(block)
    g = c * k
    q = q0
    try:
        while q < q1:
            e = min(q1, (q // g + 1) * g)
            phys = perm[q:e]
            by_pos = np.argsort(phys, kind="stable")
            srt = phys[by_pos]
            rank = np.empty(len(phys), dtype=np.int64)
            rank[by_pos] = np.arange(len(phys))  # phys[t] is srt[rank[t]]
            got: Any = None
            if mapped is not None:
                try:
                    got = mapped.take(srt)  # records decoded as they are yielded
                except ExportChangedError:
                    raise  # never read on: samples of two exports would mix
                except Exception:
                    mapped.close()
                    mapped = None
            if got is None:
                got = []  # records decoded as they are read
                for seg in np.split(srt, np.flatnonzero(np.diff(srt) != 1) + 1):
                    got.extend(_read_run(run, int(seg[0]), int(seg[-1]) + 1))
                if len(got) != len(srt):
                    raise WdspqError(f"a read of {len(srt)} samples gave {len(got)}")
            if isinstance(got, list):
                for j in rank.tolist():
                    yield got[j]
            else:
                for j in rank.tolist():
                    yield _decoded(got, j, run)
            q = e
    finally:
        if mapped is not None:
            mapped.close()


def _decoded(got: Any, j: int, run: Callable[[int, int], Iterator[Any]]) -> Any:
    """Entry `j` of mapped records (`shardfmt.read.MappedRecords`), decoded; a sample that does not decode is
    read again alone through ``run`` (its error policy: raise naming it, or a placeholder)."""
    try:
        return got[j]
    except ExportChangedError:
        raise
    except Exception:
        p = got.sample(j)
        again = _read_run(run, p, p + 1)
        if not again:
            raise WdspqError(f"a read of sample {p} gave nothing") from None
        return again[0]


def _read_run(run: Callable[[int, int], Iterator[Any]], a: int, b: int) -> list[Any]:
    """Samples `a .. b-1` through `run`, its iterator closed after (its reader released now)."""
    it = run(a, b)
    try:
        return list(itertools.islice(it, b - a))
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


# ----------------------------------------------------------------------------------------------
# unconsumed ranges and pieces


def check_consumed(consumed: Sequence[Sequence[int]], shard_sizes: Sequence[int], base: Sequence[int]) -> list[list[int]]:
    """Validated, sorted ``[[shard, start, end], ...]``: ranges consumed past each shard's ``base``."""
    out = []
    for r in consumed:
        try:
            s, a, b = (int(x) for x in r)
        except (TypeError, ValueError):
            raise StateError(f"consumed range {r!r} is not [shard, start, end]") from None
        if not 0 <= s < len(shard_sizes) or not int(base[s]) < a < b <= int(shard_sizes[s]):
            raise StateError(f"consumed range {[s, a, b]} is outside shard {s}'s unconsumed part")
        out.append([s, a, b])
    out.sort()
    for x, y in zip(out, out[1:]):
        if x[0] == y[0] and y[1] <= x[2]:
            raise StateError(f"consumed ranges {x} and {y} overlap or touch (not canonical)")
    return out


def remaining_ranges(
    shard_sizes: Sequence[int], base: Sequence[int], consumed: Sequence[Sequence[int]], order: Sequence[int]
) -> list[tuple[int, int, int]]:
    """Unconsumed ``(shard, start, end)`` ranges, shards in ``order``, each shard's ranges by start."""
    by_shard: dict[int, list[tuple[int, int]]] = {}
    for s, a, b in consumed:
        by_shard.setdefault(int(s), []).append((int(a), int(b)))
    out = []
    for s in order:
        s = int(s)
        pos = int(base[s])
        for a, b in sorted(by_shard.get(s, ())):
            if a > pos:
                out.append((s, pos, a))
            pos = max(pos, b)
        if pos < int(shard_sizes[s]):
            out.append((s, pos, int(shard_sizes[s])))
    return out


def split_ranges(
    ranges: Sequence[tuple[int, int, int]], n_slots: int, blocks: Sequence[int] | None = None
) -> list[tuple[int, int, int]]:
    """Cut ranges longer than ``f = total // n_slots`` into ``ceil(len / f)`` pieces of at most ``f`` each.

    The cuts are near-equal; with ``blocks`` (samples per ordinal block of each shard, `block_size`) each
    cut moves to the block boundary nearest to it among those that keep every piece at most ``f`` (where
    every piece has a block's room to spare, every cut is a boundary and each block is read by one piece
    in one go); a cut left inside a block still reads each chunk of it in at most two runs (`in_shard_order`), so
    reads per epoch are O(chunks + pieces), never one per sample. Pieces number at most ``len(ranges) + 2 *
    n_slots``, and with every piece at most ``f`` the cursor's dealing gives every slot at least one.
    Nothing is cut when every range is already short enough (e.g. as many equal shards as slots, or more)."""
    total = sum(b - a for _, a, b in ranges)
    f = total // max(1, int(n_slots))
    if n_slots <= 1 or f < 1:
        return list(ranges)
    out = []
    for s, a, b in ranges:
        n = b - a
        m = -(-n // f)
        cuts = [a + (i * n) // m for i in range(m + 1)]
        g = int(np.prod(block_layout(blocks[s]))) if blocks is not None else 0
        for i in range(1, m if g else 1):
            lo, hi = max(cuts[i - 1] + 1, b - (m - i) * f), min(cuts[i - 1] + f, b - (m - i))
            near = [x for x in (cuts[i] // g * g, -(-cuts[i] // g) * g, -(-lo // g) * g, hi // g * g) if lo <= x <= hi]
            cuts[i] = min(near, key=lambda x: abs(x - cuts[i])) if near else min(max(cuts[i], lo), hi)
        out.extend((s, x, y) for x, y in zip(cuts, cuts[1:]))
    return out


def fold_consumed(
    shard_sizes: Sequence[int], base: Sequence[int], consumed: Sequence[Sequence[int]], taken: Sequence[tuple[int, int, int]]
) -> tuple[list[int], list[list[int]]]:
    """Canonical ``(base, consumed)`` after also consuming the ``(shard, start, end)`` ranges ``taken``:
    ``base[s]`` is the consumed prefix of shard ``s``, ``consumed`` the other consumed ranges, merged."""
    spans: dict[int, list[tuple[int, int]]] = {}
    for s, a, b in [*consumed, *taken]:
        if b > a:
            spans.setdefault(int(s), []).append((int(a), int(b)))
    new_base, rest = [int(x) for x in base], []
    for s in sorted(spans):
        merged: list[list[int]] = []
        for a, b in sorted(spans[s]):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        for a, b in merged:
            if a <= new_base[s]:
                new_base[s] = max(new_base[s], b)
            else:
                rest.append([s, a, b])
        new_base[s] = min(new_base[s], int(shard_sizes[s]))
    return new_base, rest
