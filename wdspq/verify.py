"""Check an export against its manifest and, optionally, against the table (`wdspq verify`).

Integrity, one sequential read per shard: size and sha256 equal the manifest's; the index sidecar
matches its sha256 and its spans; the tar parses to the end (walked by `tarfile` through
`shardfmt.oracle`, an oracle independent of shardfmt's own reader); it holds exactly the manifest's sample
count, each sample's members decode (with the manifest's encoding) and its key matches its
`window_index`; each index offset points at that sample's first tar header; every window index
appears exactly once across shards.
Parity (with a table): the table must be the one the manifest names (size and footer hash; a
different table is one problem, not one per window); each checked window's shard sample equals
`ParquetWindowDataset[window_index]` key for key (dtype, shape, values), frames within the
manifest's recorded `max_abs_error` for a lossy encoding. Windows are taken in canonical order, in
blocks of PARITY_BLOCK, so the table side decodes each episode about once; within a block each shard's
samples are read as runs by byte range (one request per run, not per sample); `sample=N` checks a
seeded subset. A damaged table is one problem per damaged row group.
Problems are collected (not raised) so one run reports all of them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from .errors import ShardError, TableReadError, WdspqError
from .shardfmt import Manifest, SampleCodec, key_of, load_manifest, read_records, read_run
from .shardfmt.manifest import requested_tokenizer
from .shardfmt.oracle import TarWalkError, tar_members
from .shardfmt.shared_read import segment_first

_MAX_PER_SHARD = 20  # problems listed per shard before the rest are summarised
PARITY_BLOCK = 4096  # windows compared per block, in canonical order (the table decodes each episode once)
MERGE_BYTES = 1 << 20  # bytes between two wanted samples of a shard read through rather than a new request


@dataclass
class Problem:
    """One verification failure; `shard`, `window_index` and `key` are set when known."""

    message: str
    shard: str | None = None
    window_index: int | None = None
    key: str | None = None

    def __str__(self) -> str:
        parts = [self.shard] if self.shard else []
        if self.window_index is not None:
            parts.append(f"window_index {self.window_index}")
        if self.key is not None:
            parts.append(f"key {self.key!r}")
        return (": ".join([", ".join(parts), self.message])) if parts else self.message


@dataclass
class VerifyReport:
    """What `verify_shards` checked and every problem found; `ok` is True when there is none."""

    source: str
    shards: int = 0
    shards_ok: int = 0
    samples: int = 0
    parity_checked: int = 0
    parity_mismatches: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        parity = f"; parity: {self.parity_checked} windows compared, {self.parity_mismatches} differ" if self.parity_checked else ""
        head = "OK" if self.ok else f"FAILED ({len(self.problems)} problems)"
        return (
            f"verify {head}: {self.source}: {self.shards_ok}/{self.shards} shards intact, "
            f"{self.samples} samples read{parity}"
        )


class _HashingReader:
    """Wraps a binary reader: hashes and counts every byte read through it."""

    def __init__(self, f: Any) -> None:
        self.f, self.h, self.count = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.h.update(b)
        self.count += len(b)
        return b

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _check_shard(
    m: Manifest, s: int, codec: SampleCodec, shard_of: np.ndarray, pos_of: np.ndarray | None, report: VerifyReport
) -> list[Problem]:
    """Integrity checks of one shard; fills `shard_of[window]` (and `pos_of[window]`, its position, when given)
    for parsed samples."""
    entry = m.shards[s]
    name = entry["name"]
    problems: list[Problem] = []

    def add(msg: str, wi: int | None = None, key: str | None = None) -> None:
        problems.append(Problem(msg, shard=name, window_index=wi, key=key))

    storage = m.storage
    try:
        if not storage.exists(name):
            add("missing (the manifest lists it)")
            return problems
        size = storage.size(name)
    except WdspqError as e:
        add(f"cannot be read: {e}")
        return problems
    if size != entry["bytes"]:
        add(f"size is {size} bytes, the manifest says {entry['bytes']}")
    try:
        offsets = m.offsets(s).tolist()
    except WdspqError as e:
        add(str(e))
        return problems
    expected = int(entry["samples"])
    pos = 0
    try:
        with storage.open_read(name) as raw:
            f = _HashingReader(raw)
            sample: dict[str, bytes] = {}
            key: str | None = None
            end = 0
            shared = not isinstance(codec, SampleCodec)  # shared frames: a frame pack precedes its samples
            pack: Any = None

            def finish() -> None:
                nonlocal pos
                if key is None:
                    return
                try:
                    extra = {"pack": pack} if shared else {}
                    rec = codec.view(codec.record(sample, where=f"sample {pos} (key {key!r})", **extra))
                except WdspqError as e:
                    add(str(e))
                else:
                    _place(rec, key, pos)
                pos += 1

            def _place(rec: dict[str, np.ndarray], key: str, pos: int) -> None:
                wi = int(rec["window_index"])
                if key != key_of(wi):
                    add(f"sample {pos} (key {key!r}) holds window_index {wi}, its key says otherwise", wi)
                if not 0 <= wi < len(shard_of):
                    add(f"sample {pos} (key {key!r}): window_index {wi} is outside 0..{len(shard_of) - 1}", wi)
                elif shard_of[wi] >= 0:
                    add(f"sample {pos} (key {key!r}): window_index {wi} is also in shard {m.shards[shard_of[wi]]['name']}", wi)
                else:
                    shard_of[wi] = s
                    if pos_of is not None:
                        pos_of[wi] = pos
                report.samples += 1

            try:
                for mb in tar_members(f):  # tarfile's own walk: independent of shardfmt's reader
                    if mb.data is None:
                        add(f"member {mb.name!r} is not a regular file")
                        continue
                    k, ext = mb.key, mb.ext
                    if shared and ext == "frames.npy.zst":
                        finish()
                        key, sample, end = None, {}, mb.end
                        try:
                            pack = codec.decode_pack(mb.data, f"frame pack {mb.name!r}")
                        except WdspqError as e:
                            add(str(e))
                            pack = None
                        continue
                    if k != key:
                        finish()
                        key, sample = k, {}
                        if pos < len(offsets) - 1 and mb.offset != offsets[pos]:
                            add(f"sample {pos} (key {k!r}) starts at byte {mb.offset}, the index offset is {offsets[pos]}")
                    if ext not in codec.member_names:
                        add(f"sample {pos} (key {k!r}): unexpected member {mb.name!r} (expected {codec.member_names})")
                    sample[ext] = mb.data
                    end = mb.end
                finish()
                if pos == len(offsets) - 1 and end != offsets[-1]:
                    add(f"the last sample ends at byte {end}, the index's end offset is {offsets[-1]}")
            except (TarWalkError, EOFError, OSError) as e:
                why = str(e) if isinstance(e, TarWalkError) else f"{type(e).__name__}: {e}"
                add(f"tar does not parse after {pos} samples, near byte {f.count}: {why}")
            f.drain()
    except WdspqError as e:
        add(f"cannot be read: {e}")
        return problems
    if pos != expected:
        add(f"holds {pos} samples, the manifest says {expected}")
    if f.count == size == entry["bytes"] and f.h.hexdigest() != entry["sha256"]:
        add(f"sha256 is {f.h.hexdigest()}, the manifest says {entry['sha256']}")
    return problems


def _compare(shard_sample: dict[str, np.ndarray], ref: dict[str, np.ndarray], wi: int, shard: str,
             bound: int = 0, frame_keys: tuple[str, ...] = ()) -> list[Problem]:
    """Key-for-key equality; `frame_keys` may differ by at most `bound` per pixel (a lossy encoding)."""
    out: list[Problem] = []
    for k in sorted(set(shard_sample) | set(ref)):
        if k not in ref or k not in shard_sample:
            out.append(Problem("key only in the " + ("shard" if k not in ref else "table"), shard, wi, k))
            continue
        a, b = np.asarray(shard_sample[k]), np.asarray(ref[k])
        if a.dtype != b.dtype:
            out.append(Problem(f"dtype {a.dtype} in the shard, {b.dtype} from the table", shard, wi, k))
        elif a.shape != b.shape:
            out.append(Problem(f"shape {a.shape} in the shard, {b.shape} from the table", shard, wi, k))
        elif k in frame_keys and bound:
            err = int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max(initial=0))
            if err > bound:
                out.append(Problem(f"pixel error {err} exceeds the manifest's bound {bound}", shard, wi, k))
        elif not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
            diff = int(np.count_nonzero(a != b))
            out.append(Problem(f"values differ ({diff} of {a.size} elements)", shard, wi, k))
    return out


def verify_shards(
    source: str,
    table: str | None = None,
    sample: int | None = None,
    tokenizer: Any = None,
    seed: int = 0,
    progress: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> VerifyReport:
    """Verify the export at `source` (folder, manifest path or `s3://...`); see the module doc.

    With `table`, compare against the table's windows (`table.episodes.EpisodeSource`) cut with the manifest's spec and `tokenizer`
    (whose vocabulary must match the manifest's); `sample=N` compares a seeded random N windows instead
    of all. A manifest that cannot be loaded raises `ShardError`; everything else becomes a `Problem`.
    """
    m = load_manifest(source, storage_options)
    report = VerifyReport(source=m.storage.url())
    try:
        codec = m.codec()
    except ShardError as e:  # the dictionary file is damaged or missing: no record can be decoded
        report.shards = len(m.shards)
        report.problems.append(Problem(f"{e}; no sample can be decoded without it (shards not checked)"))
        return report
    n = m.num_windows
    report.shards = len(m.shards)
    total = sum(m.shard_sizes)
    if total != n:
        report.problems.append(Problem(f"manifest: shards hold {total} samples, num_windows is {n}"))
    # window -> its shard (4 bytes a window), and its position only when parity needs it
    shard_of = np.full(max(n, total), -1, dtype=np.int32)
    pos_of = np.full(max(n, total), -1, dtype=np.int32) if table is not None else None
    for s in tqdm(range(len(m.shards)), desc="verify: shards", unit="shard", disable=not progress):
        probs = _check_shard(m, s, codec, shard_of, pos_of, report)
        if not probs:
            report.shards_ok += 1
        report.problems.extend(probs[:_MAX_PER_SHARD])
        if len(probs) > _MAX_PER_SHARD:
            report.problems.append(Problem(f"... and {len(probs) - _MAX_PER_SHARD} more problems", m.shards[s]["name"]))
    missing = np.flatnonzero(shard_of[:n] < 0)
    if len(missing) and report.shards_ok == report.shards:
        report.problems.append(Problem(f"{len(missing)} window indices are in no shard (first: {missing[:5].tolist()})"))
    if table is not None:
        assert pos_of is not None
        _parity(m, codec, table, sample, tokenizer, seed, progress, shard_of[:n], pos_of[:n], report)
    return report


def _parity(
    m: Manifest, codec: SampleCodec, table: str, sample: int | None, tokenizer: Any, seed: int, progress: bool,
    shard_of: np.ndarray, pos_of: np.ndarray, report: VerifyReport,
) -> None:
    from .export.plan import table_fingerprint
    from .shardfmt.encoding import frame_keys
    from .table.episodes import EpisodeSource

    recorded = m.data.get("table") or {}
    if "bytes" in recorded and "tail_sha256" in recorded:
        have = table_fingerprint(table)
        if (have["bytes"], have["tail_sha256"]) != (recorded["bytes"], recorded["tail_sha256"]):
            report.problems.append(Problem(
                f"{table} is not the table this export was made from (the manifest names "
                f"{recorded.get('name')!r}, {recorded['bytes']} bytes; this file has {have['bytes']} bytes or "
                "another footer); parity not checked"
            ))
            return
    if tokenizer is None:
        tokenizer = requested_tokenizer(m)
    try:
        ds = EpisodeSource(table, m.data["spec"], tokenizer=tokenizer)
    except WdspqError as e:
        if not isinstance(e, TableReadError):
            raise
        report.problems.append(Problem(f"cannot read the table: {e}; parity not checked"))
        return
    want = m.data.get("tokenizer", {}).get("vocab_sha256")
    if want and ds.tokenizer_id["vocab_sha256"] != want:
        report.problems.append(Problem(
            f"the tokenizer {ds.tokenizer_id.get('requested')!r} has another vocabulary than the export's "
            f"({m.data['tokenizer'].get('class')}, {m.data['tokenizer'].get('vocab_size')} tokens); pass --tokenizer"
        ))
        return
    if len(ds) != m.num_windows:
        report.problems.append(Problem(f"the table gives {len(ds)} windows, the export holds {m.num_windows}"))
    n = min(len(ds), m.num_windows)
    if sample is not None and sample < n:
        chosen = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
    else:
        chosen = np.arange(n)
    bound, fkeys = m.max_abs_error, tuple(frame_keys(m.sample_schema)) if not m.encoding.lossless else ()
    table_errors: set[str] = set()

    def compare(got: dict[str, np.ndarray], wi: int, name: str) -> None:
        try:
            ref = ds.sample_numpy(wi)
        except WdspqError as e:  # a damaged table: one problem per distinct error (per row group), not per window
            if str(e) not in table_errors:
                table_errors.add(str(e))
                report.problems.append(Problem(f"window_index {wi}: cannot read the table: {e}"))
            return
        probs = _compare(got, ref, wi, name, bound, fkeys)
        report.parity_checked += 1
        if probs:
            report.parity_mismatches += 1
            report.problems.extend(probs)

    m = _KeepIndexes(m)  # type: ignore[assignment]  # blocks revisit every shard: read each index once
    with tqdm(total=len(chosen), desc="verify: parity", unit="win", disable=not progress) as bar:
        for b0 in range(0, len(chosen), PARITY_BLOCK):
            block = chosen[b0 : b0 + PARITY_BLOCK]
            block = block[shard_of[block] >= 0]  # unreadable ones are already reported by the integrity pass
            for s in np.unique(shard_of[block]).tolist():
                wins = block[shard_of[block] == s]
                wins = wins[np.argsort(pos_of[wins], kind="stable")]
                _parity_shard(m, codec, int(s), wins, pos_of[wins], compare, report)
            bar.update(len(chosen[b0 : b0 + PARITY_BLOCK]))


class _KeepIndexes:
    """The manifest, keeping every shard index it loads (16 bytes a sample) rather than the few its cache
    holds: each block of the parity pass visits the shards again."""

    def __init__(self, m: Manifest) -> None:
        self._m = m
        self._spans: dict[int, np.ndarray] = {}

    def index(self, shard: int) -> np.ndarray:
        spans = self._spans.get(shard)
        if spans is None:
            spans = self._spans[shard] = self._m.index(shard)
        return spans

    def __getattr__(self, name: str) -> Any:
        return getattr(self._m, name)


def _runs(spans: np.ndarray, positions: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) runs of sample positions (ascending) to read with one request each: neighbours
    are joined when the bytes between them are at most MERGE_BYTES (cheaper than another request).

    Shared frames: a run that would start inside a segment starts at the segment's first sample instead
    when that is at most MERGE_BYTES earlier, so the segment's frame pack comes in the same request."""
    runs: list[tuple[int, int]] = []
    for p in positions.tolist():
        if runs:
            a, b = runs[-1]
            gap = int(spans[p, 0]) - int(spans[b - 1, 0] + spans[b - 1, 1])
            if p < b or gap <= MERGE_BYTES:
                runs[-1] = (a, max(b, p + 1))
                continue
        runs.append((_segment_start(spans, p, runs[-1][1] if runs else 0), p + 1))
    return runs


def _segment_start(spans: np.ndarray, p: int, floor: int) -> int:
    """The first sample (>= `floor`) of sample `p`'s frame segment within MERGE_BYTES of it; `p` itself for
    per-sample shards (2-column index) or when that sample is further away."""
    if spans.shape[1] < 4:
        return p
    a = segment_first(spans, p, floor)
    if a is None or int(spans[p, 0]) - int(spans[a, 0]) > MERGE_BYTES:
        return p  # its first sample is in an earlier run, or too far
    return a


def _parity_shard(m: Manifest, codec: SampleCodec, s: int, wins: np.ndarray, positions: np.ndarray,
                  compare: Any, report: VerifyReport) -> None:
    """Compare the windows `wins` (at `positions`, ascending) of shard `s`, read as runs of samples."""
    name = m.shards[s]["name"]
    wanted = dict(zip(positions.tolist(), wins.tolist()))
    for a, b in _runs(m.index(s), positions):
        done = a
        try:
            for pos, rec in enumerate(read_records(m, s, a, b, codec), a):
                wi = wanted.get(pos)
                if wi is not None:
                    compare(codec.view(rec), wi, name)
                done = pos + 1
        except WdspqError:
            # a bad sample in the run: the rest of the run one sample at a time, naming the failing ones
            for pos in range(done, b):
                wi = wanted.get(pos)
                if wi is None:
                    continue
                try:
                    got = next(iter(read_run(m, s, pos, pos + 1, codec)))
                except WdspqError as e:
                    report.problems.append(Problem(f"cannot read the sample: {e}", name, wi))
                    continue
                compare(got, wi, name)
