"""Streaming faults: each bad shard, member or manifest gets an error naming it, or is skipped.

Every fault goes through `StreamLoader`. Default policy: a `WdspqError` naming the shard (and member or
sample). `on_error="skip"`: no exception, one warning (per worker) with the count, placeholders
(window_index and episode_index -1) in the bad samples' places so batches stay the same size, and
every good window delivered exactly once, in the clean epoch's order.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import shutil
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from wdspq import ShardStream, StreamLoader, WindowSpec, export_shards
from wdspq.build import build_synthetic
from wdspq.errors import ShardError, WdspqError
from wdspq.shardfmt import RAW, load_manifest, read_run
from wdspq.stream.reader import SampleReader, SkippedSamplesWarning

SHARD = 1  # the shard each fault damages (a full one, not the last)
SPS = 8  # samples per shard


@pytest.fixture(scope="module")
def clean(tmp_path_factory, tokenizer_path) -> Path:
    """A tiny export: 59 windows in 8 shards of 8 (the last one 3)."""
    d = tmp_path_factory.mktemp("faults")
    build_synthetic(d / "t.parquet", episodes=3, seconds=1.0, image_size=8, video_size=16, seed=1, progress=False)
    spec = WindowSpec(acts_length_sec=0.1, obs_length_sec=0.1, video_frame_offsets=[0], stride=5, max_text_tokens=8)
    export_shards(d / "t.parquet", d / "sh", spec, tokenizer=tokenizer_path, samples_per_shard=SPS, seed=0,
                  progress=False, encoding=RAW)  # raw records: the faults below patch known bytes  # fmt: skip
    return d / "sh"


def shard_windows(src: Path, shard: int) -> list[int]:
    m = load_manifest(str(src))
    return [int(s["window_index"]) for s in read_run(m, shard, 0, m.shard_sizes[shard])]


def _epoch(src: Path, workers: int = 0, **kw) -> tuple[list[int], list[int], list[int]]:
    """(window_index per sample, episode_index per sample, batch sizes) of one epoch through StreamLoader."""
    loader = StreamLoader(ShardStream(src, seed=3, **kw), batch_size=4, num_workers=workers)
    wi: list[int] = []
    ei: list[int] = []
    sizes: list[int] = []
    for b in loader:
        wi += b["window_index"].tolist()
        ei += b["episode_index"].tolist()
        sizes.append(len(b["window_index"]))
    return wi, ei, sizes


@pytest.fixture(scope="module")
def clean_epochs(clean) -> dict[int, tuple[list[int], list[int], list[int]]]:
    return {w: _epoch(clean, w) for w in (0, 2)}


# ---------------------------------------------------------------------------------------------------
# faults: each takes a copy of the clean export, damages it, and returns (bad sample positions of
# SHARD, words the default error names)


def _entry(src: Path, shard: int) -> dict:
    e = json.loads((src / "manifest.json").read_text())["shards"][shard]
    return {**e, "offsets": load_manifest(str(src)).offsets(shard).tolist()}


def _patch(path: Path, at: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)


def _payload(src: Path, shard: int, sample: int) -> int:
    """Byte offset of a sample's npy payload (after its one 512-byte tar header)."""
    return _entry(src, shard)["offsets"][sample] + 512


def truncated(src: Path) -> tuple[list[int], list[str]]:
    off = _entry(src, SHARD)["offsets"]
    path = src / _entry(src, SHARD)["name"]
    with open(path, "r+b") as f:
        f.truncate(off[5] + 700)  # inside sample 5's payload
    return list(range(5, SPS)), [path.name, "sample 5"]


def bad_checksum(src: Path) -> tuple[list[int], list[str]]:
    m = load_manifest(str(src))
    codec = m.codec()
    frames = len(codec.header) + codec.dtype.fields["frames"][1]
    path = src / _entry(src, SHARD)["name"]
    at = _payload(src, SHARD, 2) + frames + 17
    b = path.read_bytes()[at]
    _patch(path, at, bytes([b ^ 0xFF]))  # a pixel: the tar still parses, the npy still decodes
    return list(range(SPS)), [path.name, "checksum mismatch", "sha256"]


def bad_member(src: Path) -> tuple[list[int], list[str]]:
    path = src / _entry(src, SHARD)["name"]
    _patch(path, _payload(src, SHARD, 4), b"XXXXXX")  # the npy magic
    return [4], [path.name, "sample 4", "sample.npy", "not an .npy payload"]


def missing_member(src: Path) -> tuple[list[int], list[str]]:
    """Rename sample 3's member to `<key>.sample.npz` in its tar header (checksum fixed, manifest sha updated)."""
    path = src / _entry(src, SHARD)["name"]
    at = _entry(src, SHARD)["offsets"][3]
    header = bytearray(path.read_bytes()[at : at + 512])
    name = bytes(header[:100]).rstrip(b"\0")
    assert name.endswith(b".sample.npy"), name
    header[len(name) - 1] = ord("z")
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    _patch(path, at, bytes(header))
    _rehash(src, SHARD)
    return [3], [path.name, "sample 3", "member 'sample.npy' is missing", "sample.npz"]


def missing_shard(src: Path) -> tuple[list[int], list[str]]:
    path = src / _entry(src, SHARD)["name"]
    path.unlink()
    return list(range(SPS)), [path.name, "no such file"]


def _rehash(src: Path, shard: int) -> None:
    import hashlib

    man = json.loads((src / "manifest.json").read_text())
    e = man["shards"][shard]
    data = (src / e["name"]).read_bytes()
    e["sha256"], e["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    (src / "manifest.json").write_text(json.dumps(man, indent=1, sort_keys=True))


FAULTS: list[Callable[[Path], tuple[list[int], list[str]]]] = [
    truncated,
    bad_checksum,
    bad_member,
    missing_member,
    missing_shard,
]
IDS = [f.__name__ for f in FAULTS]


def _damaged(clean: Path, tmp_path: Path, fault) -> tuple[Path, set[int], list[str]]:
    dst = tmp_path / "sh"
    shutil.copytree(clean, dst)
    wins = shard_windows(clean, SHARD)
    positions, words = fault(dst)
    return dst, {wins[p] for p in positions}, words


def _policy(fault) -> dict:
    return {"verify_checksums": True} if fault is bad_checksum else {}


# ---------------------------------------------------------------------------------------------------
# default policy: raise, naming the shard and member/sample


@pytest.mark.parametrize("fault", FAULTS, ids=IDS)
def test_default_raises_naming_the_shard(clean, tmp_path, fault):
    src, _bad, words = _damaged(clean, tmp_path, fault)
    with pytest.raises(ShardError) as ei:
        _epoch(src, 0, **_policy(fault))
    msg = str(ei.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_default_raises_in_a_worker(clean, tmp_path):
    src, _bad, words = _damaged(clean, tmp_path, bad_member)
    with pytest.raises(WdspqError) as ei:
        _epoch(src, 2)
    for w in words:
        assert w in str(ei.value)


def test_checksum_mismatch_goes_unnoticed_without_verify(clean, tmp_path, clean_epochs):
    """A flipped pixel keeps the tar and npy valid: only the checksum (verify_checksums, wdspq verify) sees it."""
    src, _bad, _ = _damaged(clean, tmp_path, bad_checksum)
    assert _epoch(src, 0)[0] == clean_epochs[0][0]


def test_checksum_mismatch_found_by_verify(clean, tmp_path, capsys):
    from wdspq import cli, verify

    src, _bad, words = _damaged(clean, tmp_path, bad_checksum)
    report = verify.verify_shards(str(src))
    assert not report.ok
    text = "\n".join(str(p) for p in report.problems)
    assert words[0] in text and "sha256" in text, text
    sub = next(a for a in cli.make_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert "verify" in sub.choices
    assert cli.main(["verify", str(src)]) != 0
    out = capsys.readouterr()
    assert words[0] in out.out + out.err, out


# ---------------------------------------------------------------------------------------------------
# opt-in policy: skip, count, warn once, deliver every good window exactly once


def _check_skip_epoch(got, clean_epoch, bad: set[int]) -> int:
    """Same batch sizes; bad windows replaced in place by placeholders; good windows once. Returns #placeholders."""
    wi, ei, sizes = got
    cwi, cei, csizes = clean_epoch
    assert sizes == csizes
    assert wi == [-1 if w in bad else w for w in cwi]
    for e, cw in zip(ei, cwi):
        if cw >= 0:  # a real window in the clean epoch: a placeholder here iff it is bad
            assert (e == -1) == (cw in bad)
    good = Counter(w for w in wi if w >= 0)
    assert good == Counter(w for w in cwi if w >= 0 and w not in bad)
    assert all(n == 1 for n in good.values())
    return sum(e == -1 for e in ei)


@pytest.mark.parametrize("fault", FAULTS, ids=IDS)
def test_skip_delivers_every_good_window_once(clean, tmp_path, fault, clean_epochs, caplog):
    src, bad, _words = _damaged(clean, tmp_path, fault)
    with warnings.catch_warnings(record=True) as rec, caplog.at_level(logging.WARNING, logger="wdspq"):
        warnings.simplefilter("always")
        got = _epoch(src, 0, on_error="skip", **_policy(fault))
    placeholders = _check_skip_epoch(got, clean_epochs[0], bad)
    assert placeholders >= len(bad)
    skipped = [w for w in rec if issubclass(w.category, SkippedSamplesWarning)]
    assert len(skipped) == 1, [str(w.message) for w in rec]
    assert _entry(src, SHARD)["name"] in str(skipped[0].message) and "replaced" in str(skipped[0].message)
    totals = [r.getMessage() for r in caplog.records if "replaced by placeholders" in r.getMessage()]
    assert len(totals) == 1 and f"{placeholders} bad sample(s)" in totals[0], totals


def _log_warnings(path: str, _worker_id: int) -> None:
    """worker_init_fn: write this worker's warnings to a file (pytest's capture does not reach workers)."""

    def show(message, category, filename, lineno, file=None, line=None):
        with open(path, "a") as f:
            f.write(f"{category.__name__}: {message}\n")

    warnings.simplefilter("always")
    warnings.showwarning = show


@pytest.mark.parametrize("fault", FAULTS, ids=IDS)
def test_skip_with_two_workers(clean, tmp_path, fault, clean_epochs):
    src, bad, _words = _damaged(clean, tmp_path, fault)
    log = tmp_path / "warnings.txt"
    loader = StreamLoader(ShardStream(src, seed=3, on_error="skip", **_policy(fault)), batch_size=4, num_workers=2,
                          worker_init_fn=functools.partial(_log_warnings, str(log)))  # fmt: skip
    wi, ei, sizes = [], [], []
    for b in loader:
        wi += b["window_index"].tolist()
        ei += b["episode_index"].tolist()
        sizes.append(len(b["window_index"]))
    _check_skip_epoch((wi, ei, sizes), clean_epochs[2], bad)
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("SkippedSamplesWarning")]
    assert 1 <= len(lines) <= 2, lines  # at most once per worker
    # the loader's state after the epoch is complete: the next iter() starts epoch 1
    assert loader.state_dict()["epoch"] == 0


def test_skip_resumes_exactly(clean, tmp_path, clean_epochs):
    """A state saved mid-epoch under on_error='skip' resumes with exactly the remaining batches."""
    src, bad, _ = _damaged(clean, tmp_path, bad_member)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = StreamLoader(ShardStream(src, seed=3, on_error="skip"), batch_size=4)
        it = iter(a)
        first = [next(it)["window_index"].tolist() for _ in range(5)]
        state = json.loads(json.dumps(a.state_dict()))
        del it
        b = StreamLoader(ShardStream(src, seed=3, on_error="skip"), batch_size=4)
        b.load_state_dict(state)
        rest = [x["window_index"].tolist() for x in b]
    wi = [w for batch in first + rest for w in batch]
    assert wi == [-1 if w in bad else w for w in clean_epochs[0][0]]


# ---------------------------------------------------------------------------------------------------
# the reader itself


def test_truncated_shard_is_not_reopened_per_sample(clean, tmp_path):
    dst = tmp_path / "sh"
    shutil.copytree(clean, dst)
    e = _entry(dst, SHARD)
    with open(dst / e["name"], "r+b") as f:
        f.truncate(e["offsets"][1] + 100)  # samples 1..7 cut
    m = load_manifest(str(dst))
    opened = []
    real = m.storage.open_read

    def counting(name, *a, **k):
        opened.append(name)
        return real(name, *a, **k)

    m.storage.open_read = counting
    r = SampleReader(m, on_error="skip")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = list(r.run(SHARD, 0, SPS))
    assert len(out) == SPS and [int(s["episode_index"]) for s in out][1:] == [-1] * (SPS - 1)
    assert int(out[0]["window_index"]) == shard_windows(clean, SHARD)[0]
    assert len(opened) <= 4  # the cut samples are known from the shard's size, not re-read one by one
    assert r.skipped == SPS - 1
    assert len(rec) == 1 and f"replaced {SPS - 1} bad sample(s)" in str(rec[0].message)
    ph = out[-1]
    assert int(ph["window_index"]) == -1 and not ph["actions_mask"].any() and not ph["frames"].any()
    assert {k: (v.dtype, v.shape) for k, v in ph.items()} == {k: (v.dtype, v.shape) for k, v in out[0].items()}


def test_checksum_is_verified_once_per_shard(clean):
    m = load_manifest(str(clean))
    whole = []
    real = m.storage.open_read

    def counting(name, start=0, end=None, **k):
        if start == 0 and end is None:
            whole.append(name)
        return real(name, start, end, **k)

    m.storage.open_read = counting
    r = SampleReader(m, verify_checksums=True)
    for a, b in ((0, 3), (3, 8), (0, 8)):
        assert len(list(r.run(0, a, b))) == b - a
    assert whole == [m.shards[0]["name"]]


def test_bad_policy_is_refused(clean):
    with pytest.raises(WdspqError, match="on_error"):
        ShardStream(clean, on_error="ignore")


# ---------------------------------------------------------------------------------------------------
# manifest faults: always raise (there is nothing to skip to), naming the manifest


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda t: t[: len(t) // 2], ["manifest.json", "not valid JSON"]),
        (lambda t: "{not json", ["manifest.json", "not valid JSON"]),
        (lambda t: t.replace('"version": 2', '"version": 99'), ["manifest.json", "version 99", "not supported"]),
        (lambda t: t.replace('"format": "wdspq-shards"', '"format": "other"'), ["manifest.json", "not a wdspq manifest"]),
    ],
    ids=["cut", "garbage", "unknown-version", "unknown-format"],
)
@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_bad_manifest_is_named(clean, tmp_path, mutate, words, on_error):
    dst = tmp_path / "sh"
    shutil.copytree(clean, dst)
    text = (dst / "manifest.json").read_text()
    new = mutate(text)
    assert new != text
    (dst / "manifest.json").write_text(new)
    with pytest.raises(ShardError) as ei:
        StreamLoader(ShardStream(dst, on_error=on_error), batch_size=4)
    for w in words:
        assert w in str(ei.value), (w, str(ei.value))


def test_missing_manifest_is_named(clean, tmp_path):
    dst = tmp_path / "sh"
    shutil.copytree(clean, dst)
    (dst / "manifest.json").unlink()
    with pytest.raises(ShardError, match="manifest.json.*exported shard folder"):
        ShardStream(dst)
