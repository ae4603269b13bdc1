"""What an export will be, before it is written: shard assignment, configuration identity, size estimate.

`estimate_export` is `wdspq export --dry-run`: it encodes a few real windows (evenly spread over the
table) with the chosen encoding to measure bytes per sample, and from that the total, the
amplification versus the table, the peak scratch space (spill files plus shards) and the free space
where they go. A real export refuses to start when a disk cannot hold its share (unless `force`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WdspqError
from ..jsonutil import short_digest
from ..shardfmt import Encoding, SampleCodec, end_of_archive, index_bytes, key_of, sample_tar
from ..shardfmt.tuning import held_out, train_codec

SPILL_PREFIX = ".wdspq-spill-"
PROBE_SAMPLES = 24
PROBE_EPISODES = 4
TRAIN_SAMPLES = 256  # windows the zstd tuning is measured and trained on (shardfmt.tuning)
TRAIN_BYTES = 32 * 2**20  # ... at most this many record bytes of them
_MARGIN = 1.05  # headroom on top of the estimate when checking free space


def segment_assignment(starts: np.ndarray, counts: np.ndarray, segment: int, samples_per_shard: int, seed: int,
                       shuffle: bool) -> list[np.ndarray]:
    """Shared frames: window indices of each shard in write order. Each episode's windows are cut into
    segments of `segment` consecutive windows; a seeded order of all segments (canonical order with
    `shuffle=False`) is cut into shards of whole segments, a shard closing once it holds at least
    `samples_per_shard` windows. Windows stay ascending inside a segment (they share its frame pack).

    The order is stratified (`segment_order`): an episode's segments lie evenly spaced along it, so a shard
    holds segments of as many different episodes as it can, as many of each as its share of the table."""
    seg_first, seg_len, seg_ep = [], [], []
    for e, (a, c) in enumerate(zip(np.asarray(starts).tolist(), np.asarray(counts).tolist())):
        for k in range(0, int(c), segment):
            seg_first.append(int(a) + k)
            seg_len.append(min(segment, int(c) - k))
            seg_ep.append(e)
    first, length = np.asarray(seg_first, dtype=np.int64), np.asarray(seg_len, dtype=np.int64)
    order = segment_order(np.asarray(seg_ep, dtype=np.int64), seed) if shuffle else np.arange(len(first))
    shards, cur, held = [], [], 0
    for g in order.tolist():
        cur.append(g)
        held += int(length[g])
        if held >= samples_per_shard:
            shards.append(cur)
            cur, held = [], 0
    if cur:
        shards.append(cur)
    if shuffle:  # full segments first: the epoch order's chunks (whole segments) then hold whole segments
        shards = [sorted(gs, key=lambda g: length[g] < segment) for gs in shards]
    return [np.concatenate([np.arange(first[g], first[g] + length[g], dtype=np.int64) for g in gs]) for gs in shards]


def segment_order(episode: np.ndarray, seed: int) -> np.ndarray:
    """A seeded, stratified order of segments (`episode[g]`: the episode of segment g, non-decreasing).

    An episode of m segments puts them, in a random order, at the positions (i + u) / m, i = 0..m-1, of the
    unit interval (u uniform, one per episode); segments are sorted by position (random ties). A random
    permutation would put some episodes' segments next to each other in a shard and leave others out; a
    shard of few segments then mixes fewer episodes into a batch than shards of randomly drawn windows."""
    rng = np.random.default_rng(seed)
    n = len(episode)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.r_[0, np.flatnonzero(np.diff(episode)) + 1]
    sizes = np.diff(np.r_[first, n])
    own = np.repeat(np.arange(len(first)), sizes)  # episode rank of each segment (0 .. episodes-1)
    shuffled = np.lexsort((rng.random(n), own))  # each episode's segments in a random order
    rank = np.empty(n, dtype=np.int64)
    rank[shuffled] = np.arange(n) - np.repeat(first, sizes)
    pos = (rank + rng.random(len(first))[own]) / sizes[own]
    return np.lexsort((rng.random(n), pos)).astype(np.int64)


def check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise WdspqError(f"export: {name} must be an integer >= {lo}, got {value!r}")
    if value < lo:
        raise WdspqError(f"export: {name} must be >= {lo}, got {value}")
    return int(value)


def config_digest(config: dict[str, Any]) -> str:
    return short_digest(config)


def table_fingerprint(path: str) -> dict[str, Any]:
    """Cheap identity of the table file: size and a hash of its tail (the footer holds row-group stats)."""
    from ..table.file import table_size_and_tail

    size, tail = table_size_and_tail(path)
    return {"bytes": size, "tail_sha256": hashlib.sha256(tail).hexdigest()}


def default_spill_dir(out: str, digest: str) -> Path:
    """Local scratch for phase 1: inside a local output (same disk, hidden, never a `.tar`), else the temp dir.

    Stable per configuration (and, in the temp dir, per output URL: exports of one configuration to
    different prefixes do not share it), so a re-run after an interruption finds it.
    """
    if out.startswith("s3://"):
        where = hashlib.sha256(out.rstrip("/").encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"wdspq-spill-{digest}-{where}"
    return Path(out) / f"{SPILL_PREFIX}{digest}"


def _existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: str | Path) -> int:
    """Free bytes on the filesystem that holds (or would hold) `path`."""
    return shutil.disk_usage(_existing_ancestor(Path(path))).free


def _device(path: str | Path) -> int:
    return os.stat(_existing_ancestor(Path(path))).st_dev


def probe_windows(ds: Any, count: int) -> list[tuple[int, int]]:
    """About `count` (episode, window) pairs, evenly spread over at most PROBE_EPISODES episodes that are
    themselves spread over the table: decoding an episode is the costly part (the export decodes each
    once more), so a probe of many episodes would cost much of the export."""
    eps = np.flatnonzero(ds.index.counts > 0)
    eps = eps[np.unique(np.linspace(0, len(eps) - 1, num=min(PROBE_EPISODES, len(eps))).round().astype(np.int64))]
    per = -(-count // len(eps))
    out = []
    for e in eps.tolist():
        c = int(ds.index.counts[e])
        picks = np.unique(np.linspace(0, c - 1, num=min(per, c)).round().astype(np.int64))
        out += [(e, int(ds.index.starts[e]) + int(j)) for j in picks.tolist()]
    return out


def tune_codec(ds: Any, encoding: Encoding) -> SampleCodec:
    """The codec an export of `ds` writes with: `encoding` tuned on probe windows (`shardfmt.tuning`)."""
    schema = ds.sample_schema()
    if encoding.layout == "shared-frames":  # the sample members (records without pixels) are tuned as usual
        from ..shardfmt.shared import SharedFramesCodec, rest_schema

        rest = rest_schema(schema)
        per_sample = SampleCodec(rest, Encoding(level=encoding.level, layout="per-sample")).rest_dtype.itemsize
        count = max(8, min(TRAIN_SAMPLES, TRAIN_BYTES // max(per_sample, 1)))
        plain = Encoding(level=encoding.level, delta=encoding.delta, dictionary=encoding.dictionary, layout="per-sample")
        tuned = train_codec(rest, plain, [(e, {k: v for k, v in ds.sample_numpy(w).items() if k in rest})
                                          for e, w in probe_windows(ds, count)], len(ds))
        return SharedFramesCodec(schema, encoding, tuned.delta_keys, tuned.dictionary)
    if encoding.compression != "zstd" or not (encoding.delta or encoding.dictionary):
        return SampleCodec(schema, encoding)
    per_sample = SampleCodec(schema, encoding).rest_dtype.itemsize
    count = max(8, min(TRAIN_SAMPLES, TRAIN_BYTES // max(per_sample, 1)))
    return train_codec(schema, encoding, [(e, ds.sample_numpy(w)) for e, w in probe_windows(ds, count)], len(ds))


def estimate_export(ds: Any, codec: SampleCodec, samples_per_shard: int, out: str, spill_root: Path,
                    table_bytes: int, probe: int = PROBE_SAMPLES) -> dict[str, Any]:
    """Measured size of the export of `ds` written with `codec` (see the module doc); bytes are estimates
    from `probe` windows."""
    encoding = codec.encoding
    if encoding.layout == "shared-frames":
        per_sample, n_probe = _shared_bytes_per_sample(ds, codec, probe)
        return _estimate(ds, codec, per_sample, n_probe, samples_per_shard, out, spill_root, table_bytes)
    if codec.dictionary is None:
        pairs = probe_windows(ds, probe)
    else:  # measured where the dictionary was judged, not where it was trained
        pairs = probe_windows(ds, 2 * probe)
        pairs = [p for p, h in zip(pairs, held_out([e for e, _ in pairs])) if h] or pairs
    picks = [w for _, w in pairs]
    sizes = []
    for w in picks:
        s = ds.sample_numpy(w)
        sizes.append(len(sample_tar(key_of(w), codec.encode(s, where=f"window {w}"))))
    return _estimate(ds, codec, float(np.mean(sizes)), len(picks), samples_per_shard, out, spill_root, table_bytes)


def _shared_bytes_per_sample(ds: Any, codec: Any, probe: int) -> tuple[float, int]:
    """Shared frames: bytes per window of the held-out probe episodes (those the dictionary was judged on),
    each measured on whole segments (sharing is only seen over a segment): up to `probe` full segments
    spread over the episode stand for all of its full segments, and its short last segment is encoded as is."""
    from ..shardfmt.shared import segment_blobs

    seg = codec.encoding.segment
    eps = sorted({e for e, _ in probe_windows(ds, PROBE_EPISODES)})
    eps = [e for e, h in zip(eps, held_out(eps)) if h] or eps
    total = 0.0
    windows = measured = 0
    for e in eps:
        c, a = int(ds.index.counts[e]), int(ds.index.starts[e])

        def seg_bytes(k: int, n: int, a: int = a) -> int:
            samples = [ds.sample_numpy(a + j) for j in range(k, k + n)]
            return sum(map(len, segment_blobs(codec, samples, f"window {a + k}")))

        full = c // seg
        if full:
            picks = np.unique(np.linspace(0, full - 1, num=min(probe, full)).round().astype(np.int64)).tolist()
            total += full * float(np.mean([seg_bytes(i * seg, seg) for i in picks]))
            measured += len(picks) * seg
        if c % seg:
            total += seg_bytes(full * seg, c % seg)
            measured += c % seg
        windows += c
    return total / max(windows, 1), measured


def _estimate(ds: Any, codec: Any, per_sample: float, n_probe: int, samples_per_shard: int, out: str,
              spill_root: Path, table_bytes: int) -> dict[str, Any]:
    """The dry run's figures from a measured `per_sample` (see `estimate_export`)."""
    n = len(ds)
    encoding = codec.encoding
    n_shards = -(-n // samples_per_shard)
    shards_bytes = int(per_sample * n + n_shards * len(end_of_archive(0)))
    cols = 4 if encoding.layout == "shared-frames" else 2
    index_total = n_shards * len(index_bytes(np.zeros((0, 2)))) + 8 * cols * n
    total = shards_bytes + index_total + len(codec.dictionary or b"")
    # Peak: every spilled sample and every written shard exist together just before the spill is removed.
    needs: dict[int, dict[str, Any]] = {}
    places = [("spill", spill_root, shards_bytes)]
    if not out.startswith("s3://"):
        places.append(("shards", Path(out), total))
    for what, path, size in places:
        dev = _device(path)
        d = needs.setdefault(dev, {"path": str(_existing_ancestor(path)), "needs": 0, "what": [], "free": free_bytes(path)})
        d["needs"] += size
        d["what"].append(what)
    return {
        "windows": n,
        "shards": n_shards,
        "samples_per_shard": samples_per_shard,
        "encoding": encoding.to_dict(),
        "bytes_per_sample": per_sample,
        "probe_windows": n_probe,
        "total_bytes": total,
        "table_bytes": table_bytes,
        "amplification": total / max(table_bytes, 1),
        "peak_scratch_bytes": shards_bytes,
        "disks": list(needs.values()),
    }


def credit_existing(est: dict[str, Any], spill_root: Path) -> dict[str, Any]:
    """The estimate less the spill files an earlier run of this export left (a re-run writes only the rest)."""
    have = 0
    if spill_root.is_dir():
        for p in spill_root.glob("chunk-*"):
            try:
                have += p.stat().st_size
            except OSError:
                pass
    if have:
        dev = _device(spill_root)
        for d in est["disks"]:
            if _device(d["path"]) == dev:
                d["needs"] = max(0, d["needs"] - have)
    return est


def space_problem(est: dict[str, Any]) -> str | None:
    """Why the estimated export does not fit (the first disk short of space), or None."""
    for d in est["disks"]:
        if d["needs"] * _MARGIN > d["free"]:
            return (f"{d['path']}: the export needs about {gib(d['needs'])} there ({' + '.join(d['what'])}) "
                    f"but only {gib(d['free'])} is free")
    return None


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def format_estimate(est: dict[str, Any]) -> str:
    """The dry run's report, a few lines."""
    lines = [
        f"windows            {est['windows']:,} in {est['shards']:,} shards of up to {est['samples_per_shard']:,}",
        f"encoding           {Encoding.from_manifest(est['encoding']).describe()}",
        f"bytes/sample       {est['bytes_per_sample']:,.0f} (measured on {est['probe_windows']} encoded windows)",
        f"total              {gib(est['total_bytes'])} (shards and indexes)",
        f"amplification      {est['amplification']:.1f}x the table ({gib(est['table_bytes'])})",
        f"peak scratch       {gib(est['peak_scratch_bytes'])} of spill files, removed at the end",
    ]
    for d in est["disks"]:
        lines.append(f"disk {d['path']}: needs {gib(d['needs'])} ({' + '.join(d['what'])}), {gib(d['free'])} free")
    problem = space_problem(est)
    lines.append(f"would refuse: {problem}" if problem else "fits: yes")
    return "\n".join(lines)
