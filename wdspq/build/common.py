"""What the importers share: episode selection (`--episodes 0,3,5-9`, `--split NAME`) and clip encoding."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np

from ..errors import MediaError, SchemaError
from ..media import ClipWriter, encode_clip


def encode_frames(frames: Iterable[np.ndarray], hw: tuple[int, int], codec: str, fps: float, rows: int | None,
                  where: str, source: str, size_from: str) -> bytes:
    """An episode's camera frames ((H, W, 3) each, as they are decoded) -> one clip of the table, in the memory
    of one frame. Their size must be `hw` (`size_from` says who says so) and their count the episode's `rows`
    (None: any count but 0; errors name `where` and the `source` of the frames)."""
    try:
        writer = ClipWriter(hw[0], hw[1], codec=codec, fps=max(1, round(fps)))
    except MediaError as e:
        raise SchemaError(f"{where}: {e}") from None
    n = 0
    for frame in frames:  # a decoder's MediaError passes through: it names its own file and codec
        if frame.shape[:2] != hw:
            raise SchemaError(f"{where}: frames are {frame.shape[0]}x{frame.shape[1]} (HxW), {size_from} says {hw[0]}x{hw[1]}")
        if rows is None or n < rows:
            writer.add(frame)
        n += 1
    if rows is None and n == 0:
        raise SchemaError(f"{where}: the {source} has no frames")
    if rows is not None and n != rows:
        raise SchemaError(f"{where}: the {source} has {n} frames, the episode has {rows} rows")
    return writer.close()


def encode_camera(frames: np.ndarray, codec: str, fps: float, where: str) -> bytes:
    """(N, H, W, 3) frames -> one clip of the table; an encoder error names the episode and camera (`where`)."""
    try:
        return encode_clip(frames, codec=codec, fps=max(1, round(fps)))
    except MediaError as e:
        raise SchemaError(f"{where}: {e}") from None


def parse_episodes(text: str) -> list[int]:
    """'0,3,5-9' -> [0, 3, 5, 6, 7, 8, 9] (sorted, distinct); a bad item is an error naming it."""
    out: set[int] = set()
    for item in text.replace(" ", "").split(","):
        if not item:
            continue
        lo, sep, hi = item.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise SchemaError(f"--episodes: {item!r} is not an episode index or a range like 5-9") from None
        if a < 0 or b < a:
            raise SchemaError(f"--episodes: {item!r} is not an episode index or an increasing range like 5-9")
        out.update(range(a, b + 1))
    if not out:
        raise SchemaError(f"--episodes: {text!r} selects no episode (e.g. 0,3,5-9)")
    return sorted(out)


def select(
    available: Sequence[int],
    episodes: Iterable[int] | None = None,
    split: str | None = None,
    splits: Mapping[str, Collection[int]] | None = None,
    where: str = "dataset",
) -> list[int]:
    """The episode indices to import, in the source's order.

    `episodes` keeps only those indices (each must exist); `split` keeps only the episodes that `splits`
    (split name -> its episode indices) lists under that name. Both given: the episodes of the list
    that are in the split. An empty result is an error, so a typo never writes an empty table.
    """
    chosen = list(available)
    if episodes is not None:
        wanted = set(episodes)
        missing = sorted(wanted - set(available))
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            raise SchemaError(
                f"{where}: episode(s) {shown} not found (it has {len(available)} episodes, "
                f"indices {_ranges(available)})"
            )
        chosen = [i for i in chosen if i in wanted]
    if split is not None:
        splits = splits or {}
        if split not in splits:
            raise SchemaError(f"{where}: split {split!r} not found; its splits: {', '.join(sorted(splits)) or 'none'}")
        members = set(splits[split])
        chosen = [i for i in chosen if i in members]
        if not chosen:
            raise SchemaError(f"{where}: no selected episode is in split {split!r}")
    return chosen


def _ranges(indices: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8' (for error messages)."""
    s = sorted(set(indices))
    parts, i = [], 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        parts.append(str(s[i]) if i == j else f"{s[i]}-{s[j]}")
        i = j + 1
    text = ", ".join(parts[:8])
    return text + (" ..." if len(parts) > 8 else "")


def split_of(index: int, splits: Mapping[str, Collection[int]], preferred: Sequence[str] = ("train", "valid", "val", "test")) -> str | None:
    """The `split` column value of an episode: the first preferred split holding it, else the first split
    (in the source's order) that does, else None."""
    for name in [*[p for p in preferred if p in splits], *splits]:
        if index in splits[name]:
            return name
    return None
