"""What a zstd record is tuned with at export: the delta filter of float time series and a trained dictionary.

*Delta filter* (`delta_keys`, the filter itself in `delta`): applied to a float time series only where
it makes that key smaller on the training windows.

*Dictionary*: each sample is compressed on its own (so any one can be read by a Range request), which
leaves zstd no history to find what all samples share (the record header, the scene's background, the
task's tokens). A dictionary trained on windows of a few episodes gives it that history; it is kept
only when it makes held-out windows (of other episodes) smaller. Both choices are deterministic
functions of the training windows, so exports stay byte-identical.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .delta import delta_candidates, delta_encode
from .encoding import SampleCodec

DICTIONARY_BYTES = 64 * 1024  # zstd's own default is 110 KB; 32-112 KB measured within 4 % of each other
DICTIONARY_NAME = "samples.zdict"  # the export's dictionary file, next to manifest.json


def _zstd_sizes(data: Sequence[bytes], level: int, dictionary: Any = None) -> int:
    """Total zstd size of `data`, each compressed on its own (as samples are)."""
    import zstandard

    z = zstandard.ZstdCompressor(level=level, dict_data=dictionary)
    return sum(len(z.compress(b)) for b in data)


def choose_delta_keys(schema: Mapping[str, Mapping[str, Any]], samples: Sequence[Mapping[str, Any]],
                      level: int) -> tuple[str, ...]:
    """The candidate keys whose delta-filtered bytes compress smaller, summed over `samples`."""
    keep = []
    for k in delta_candidates(schema):
        dt = np.dtype(schema[k]["dtype"])
        values = [np.asarray(s[k], dtype=dt) for s in samples]
        plain = _zstd_sizes([v.tobytes() for v in values], level)
        filtered = _zstd_sizes([delta_encode(v).tobytes() for v in values], level)
        if samples and filtered < plain:
            keep.append(k)
    return tuple(keep)


def train_dictionary(train: Sequence[bytes], held_out: Sequence[bytes], level: int,
                     windows: int | None = None) -> bytes | None:
    """A zstd dictionary trained on `train` record bodies, or None when training fails (too little data)
    or the dictionary does not make `held_out` bodies smaller (with `windows`, the export's sample count:
    smaller by more than the dictionary's own size over that many samples)."""
    import zstandard

    if len(train) < 2 or not held_out:
        return None
    size = min(DICTIONARY_BYTES, max(1024, sum(map(len, train)) // 10))
    try:
        d = zstandard.train_dictionary(size, list(train), level=level, threads=0)
    except zstandard.ZstdError:
        return None
    saved = (_zstd_sizes(held_out, level) - _zstd_sizes(held_out, level, d)) / len(held_out)  # bytes per sample
    data = d.as_bytes()
    if saved <= 0 or (windows is not None and saved * windows <= len(data)):
        return None
    return data


def held_out(episodes: Sequence[int]) -> list[bool]:
    """Which of these samples (given by episode) judge the dictionary rather than train it: those of every
    other episode (in sorted order), or every other sample when all come from one episode."""
    rank = {e: i for i, e in enumerate(sorted(set(episodes)))}
    if len(rank) > 1:
        return [rank[e] % 2 == 1 for e in episodes]
    return [i % 2 == 1 for i in range(len(episodes))]


def train_codec(schema: Mapping[str, Mapping[str, Any]], encoding: Any,
                samples: Sequence[tuple[int, Mapping[str, Any]]], windows: int | None = None) -> Any:
    """The SampleCodec an export writes with: `encoding` tuned on `samples` ((episode, sample dict) pairs).

    Delta keys are chosen on every sample; the dictionary is trained on the samples of every other
    episode and judged on the rest (alternate samples when there is one episode), so a dictionary that
    only remembers its own episodes is not kept; with `windows` (the export's size) it must also save
    more than its own size over the export."""
    codec = SampleCodec(schema, encoding)
    if encoding.compression != "zstd" or not samples:
        return codec
    dicts = [s for _, s in samples]
    keys = choose_delta_keys(schema, dicts, encoding.level) if encoding.delta else ()
    codec = SampleCodec(schema, encoding, keys)
    if not encoding.dictionary:
        return codec
    side = held_out([e for e, _ in samples])
    bodies = [codec.body(s) for s in dicts]
    dictionary = train_dictionary([b for b, h in zip(bodies, side) if not h], [b for b, h in zip(bodies, side) if h],
                                  encoding.level, windows)
    return SampleCodec(schema, encoding, keys, dictionary) if dictionary else codec
