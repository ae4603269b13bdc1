"""The shard manifest (format version 2): building and writing it (`build_manifest`, `manifest_bytes`),
reading and checking it (`parse_manifest`, `load_manifest`), its identity, and each shard's index.

The manifest is O(shards): per shard its name, sample count, bytes, sha256 and its index sidecar's
name, bytes and sha256; per-sample byte offsets live only in the index sidecars, which a process
loads when it opens that shard (a few of them cached). Normalisation statistics carry their own
sha256. Version 1 manifests (offsets inline, raw records) are still read, for streaming only.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import ExportChangedError, ShardError, WdspqError
from ..jsonutil import COMPACT, json_sha256, short_digest
from ..storage import open_storage
from .encoding import RAW, Encoding, SampleCodec
from .index import check_spans, parse_index, spans_from_offsets
from .names import locate_window
from .tuning import DICTIONARY_NAME

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "wdspq-shards"
MANIFEST_VERSION = 2
READABLE_VERSIONS = (1, 2)
_WARNED_RULES: set[str] = set()  # exports already warned about in this process
_INDEX_CACHE = 8  # indexes a process keeps (O(open shards), never O(windows of the epoch))


class OldWindowRulesWarning(UserWarning):
    """An export made under older window rules is being read."""


def file_entry(name: str, size: int, sha256: str) -> dict[str, Any]:
    """A manifest's record of one file beside it (a shard, an index, the dictionary): name, bytes, sha256."""
    return {"name": name, "bytes": int(size), "sha256": sha256}


def is_file_entry(entry: Any) -> bool:
    """Whether `entry` has the name, bytes and sha256 of a file record."""
    return isinstance(entry, dict) and {"name", "bytes", "sha256"} <= set(entry)


def entry_mismatch(entry: dict[str, Any], size: int, sha256: str, what: str = "file") -> str | None:
    """None when a file of `size` bytes and `sha256` is the one `entry` records, else what differs."""
    if size == int(entry["bytes"]) and sha256 == entry["sha256"]:
        return None
    return (f"the manifest records {entry['bytes']} bytes with sha256 {entry['sha256']}, the {what} has "
            f"{size} bytes with sha256 {sha256}")


def tuning_entry(codec: SampleCodec) -> dict[str, Any]:
    """The manifest's record of how `codec` was tuned: its delta keys and its dictionary file, if any."""
    out: dict[str, Any] = {}
    if codec.encoding.compression == "zstd":
        out["delta_keys"] = list(codec.delta_keys)
    if getattr(codec, "shared", None) is not None:  # shared frames: the keys stored once per segment
        out["shared_keys"] = [[k, n] for k, n in codec.shared]
        out["pack_delta_keys"] = list(codec.pack_delta)
    if codec.dictionary is not None:
        out["dictionary_file"] = file_entry(DICTIONARY_NAME, len(codec.dictionary),
                                            hashlib.sha256(codec.dictionary).hexdigest())
    return out


def stats_digest(stats: Any) -> str:
    """sha256 of the canonical JSON of the manifest's `stats` (what `stats_sha256` records)."""
    return json_sha256(stats, COMPACT)


@dataclass
class Manifest:
    """A parsed manifest plus the storage it lives in; `id` is the sha256 of the manifest bytes."""

    data: dict[str, Any]
    storage: Any
    id: str
    url: str
    name: str = "manifest.json"  # the manifest's object name in `storage`
    stamp: str | None = None  # `storage.stamp(name)` when it was read: a rewritten export changes it
    _indexes: OrderedDict = field(default_factory=OrderedDict, repr=False)

    def check_current(self, shard: int) -> None:
        """Raise ExportChangedError unless the manifest is still the one this object was read from.

        Called after a shard was opened (docs/shards.md, "An export rewritten under a reader"): an export
        removes the old manifest before it replaces any shard, so an unchanged manifest proves the open
        file (locally the open inode, on S3 the first GetObject, resumed only with If-Match) is this
        export's."""
        if self.stamp is None:
            return
        try:
            now = self.storage.stamp(self.name)
        except WdspqError:
            now = None
        if now != self.stamp:
            what = "removed" if now is None else "rewritten"
            raise ExportChangedError(
                f"{self.url}: the export changed while it was being read (its manifest was {what}, e.g. by "
                f"`wdspq export --overwrite`); stopped before shard {self.shards[shard]['name']} so that "
                "samples of two exports are never mixed; start again from the new export")

    def sample_spans(self, shard: int, start: int, stop: int) -> Any:
        """The index rows of samples `start .. stop-1` of a shard, all of them or a ShardError naming the shard
        (an index of another export says that, not "checksum mismatch": `check_current` first)."""
        try:
            spans = self.index(shard)[start:stop]
        except ShardError:
            self.check_current(shard)
            raise
        if len(spans) != stop - start:
            url = self.storage.url(self.shards[shard]["name"])
            raise ShardError(f"{url}: samples {start}..{stop - 1} requested, the shard has {len(self.index(shard))}")
        return spans

    def open_checked(self, shard: int, begin: int, end: int) -> Any:
        """Open bytes `begin .. end` of a shard, then `check_current`: the bytes opened are this export's.
        A failed open is a ShardError naming the shard, unless the export changed (ExportChangedError)."""
        name = self.shards[shard]["name"]
        try:
            f = self.storage.open_read(name, begin, end)
        except WdspqError as e:
            self.check_current(shard)
            raise ShardError(f"{self.storage.url(name)}: cannot open shard: {e}") from None
        try:
            self.check_current(shard)
        except BaseException:
            f.close()
            raise
        return f

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_indexes": OrderedDict()}  # a worker loads the indexes it needs

    @property
    def version(self) -> int:
        return int(self.data["version"])

    @property
    def shards(self) -> list[dict[str, Any]]:
        return self.data["shards"]

    @property
    def shard_sizes(self) -> list[int]:
        return [int(s["samples"]) for s in self.shards]

    @property
    def num_windows(self) -> int:
        return int(self.data["num_windows"])

    @property
    def window_rules_version(self) -> int:
        """The window rules the export's samples were cut by (docs/windows.md "Versions"); 1 when unrecorded."""
        return int(self.data.get("window_rules_version", 1))

    def warn_old_window_rules(self) -> None:
        """Warn once per export and process when its windows were cut by older window rules."""
        from ..windows import WINDOW_RULES_VERSION

        if self.window_rules_version >= WINDOW_RULES_VERSION or self.url in _WARNED_RULES:
            return
        _WARNED_RULES.add(self.url)
        warnings.warn(OldWindowRulesWarning(
            f"{self.url}: this export's windows were cut by window rules version {self.window_rules_version} "
            f"(this wdspq cuts by version {WINDOW_RULES_VERSION}: causal signal rows, padding before an "
            "episode's first sample, see docs/windows.md); its samples differ from the map-style dataset "
            "and `wdspq verify --table` reports them; re-export the table to get the current rules"
        ), stacklevel=3)

    @property
    def spec_id(self) -> str:
        return short_digest(self.data["spec"])

    @property
    def sample_schema(self) -> dict[str, dict[str, Any]]:
        """Keys in record order -> {dtype, shape} (stored as a list: JSON objects are sorted on write)."""
        return {e["key"]: {"dtype": e["dtype"], "shape": e["shape"]} for e in self.data["sample_schema"]}

    @property
    def encoding(self) -> Encoding:
        if self.version == 1:
            return RAW
        return Encoding.from_manifest(self.data["encoding"])

    @property
    def max_abs_error(self) -> int:
        """The largest pixel error of the export's frames (0 for lossless encodings), as measured at export."""
        return int(self.data.get("encoding", {}).get("max_abs_error", 0)) if self.version >= 2 else 0

    def codec(self) -> Any:
        """The codec of this export's samples, with its delta keys and dictionary (checked against its sha256)."""
        enc = self.data.get("encoding", {}) if self.version >= 2 else {}
        dictionary = None
        if enc.get("dictionary_file"):
            dictionary = self._read_checked(enc["dictionary_file"], "the export's zstd dictionary", "dictionary")
        try:
            if self.encoding.layout == "shared-frames":
                from .shared import SharedFramesCodec

                return SharedFramesCodec(self.sample_schema, self.encoding, enc.get("delta_keys", ()), dictionary,
                                         enc.get("shared_keys"))
            return SampleCodec(self.sample_schema, self.encoding, enc.get("delta_keys", ()), dictionary)
        except ShardError as e:
            raise ShardError(f"{self.url}: {e}") from None

    def _read_checked(self, entry: dict[str, Any], what: str, short: str) -> bytes:
        """The file a manifest entry {name, bytes, sha256} names, checked against its size and sha256."""
        url = self.storage.url(entry["name"])
        try:
            data = self.storage.read_bytes(entry["name"])
        except WdspqError as e:
            raise ShardError(f"{url}: cannot read {what}: {e}") from None
        wrong = entry_mismatch(entry, len(data), hashlib.sha256(data).hexdigest())
        if wrong:
            raise ShardError(f"{url}: {short} checksum mismatch: {wrong}")
        return data

    def shard_url(self, shard: int) -> str:
        return self.storage.url(self.shards[shard]["name"])

    def locate(self, window: int) -> tuple[int, int]:
        """(shard, position) of `window`, for reading that one sample (the caller checks its window_index):
        from the seeded assignment, or for shared frames from the frame packs' keys (`shared_read`)."""
        if self.encoding.layout == "shared-frames":
            from .shared_read import locate_window as locate_shared

            return locate_shared(self, window)
        return locate_window(self.data, window)

    def index(self, shard: int) -> np.ndarray:
        """Shard `shard`'s (samples, 2) int64 (offset, length) of each sample, read and checked once per process
        (shared frames: (samples, 4), each sample's frame pack's offset and length added)."""
        spans = self._indexes.get(shard)
        if spans is not None:
            self._indexes.move_to_end(shard)
            return spans
        entry = self.shards[shard]
        where = self.shard_url(shard)
        if self.version == 1:
            spans = check_spans(spans_from_offsets(entry["offsets"]), int(entry["samples"]), None, where)
        else:
            data = self._read_checked(entry["index"], "the shard's index", "index")
            spans = parse_index(data, int(entry["samples"]), int(entry["bytes"]), self.storage.url(entry["index"]["name"]))
        spans.setflags(write=False)
        self._indexes[shard] = spans
        while len(self._indexes) > _INDEX_CACHE:
            self._indexes.popitem(last=False)
        return spans

    def offsets(self, shard: int) -> np.ndarray:
        """samples+1 byte offsets of shard `shard`: each sample's first header, then the end of the last one."""
        spans = self.index(shard)
        if len(spans) == 0:
            return np.zeros(1, dtype=np.int64)
        return np.append(spans[:, 0], spans[-1, 0] + spans[-1, 1])


def requested_tokenizer(m: Manifest) -> str | None:
    """The tokenizer export `m` asked for (`tokenizer.requested`) when it can be loaded here (a folder that
    exists, or a name); None, the default, otherwise: the vocabulary hash then tells whether they agree."""
    requested = (m.data.get("tokenizer") or {}).get("requested")
    if not requested or requested == "default":
        return None
    if os.path.sep in requested and not os.path.isdir(requested):
        return None
    return requested


def split_source(source: str) -> tuple[str, str]:
    """A shard folder, a manifest path, or `s3://bucket/prefix[/manifest.json]` -> (root, manifest name)."""
    s = str(source).rstrip("/")
    if s.endswith(".json"):
        root, _, name = s.rpartition("/")
        return (root or "."), name
    return s, MANIFEST_NAME


def _check_entries(url: str, data: dict[str, Any]) -> None:
    version = data["version"]
    for i, s in enumerate(data["shards"]):
        if not isinstance(s, dict) or not isinstance(s.get("name"), str) or not isinstance(s.get("samples"), int):
            raise ShardError(f"{url}: shard entry {i} is incomplete (needs name and samples)")
        if version == 1:
            if len(s.get("offsets", ())) != s["samples"] + 1:
                raise ShardError(f"{url}: shard entry {i} ({s['name']}) needs samples+1 offsets (format version 1)")
            continue
        ix = s.get("index")
        if not (is_file_entry(ix) and is_file_entry(s)):
            raise ShardError(f"{url}: shard entry {i} ({s['name']}) is incomplete (needs bytes, sha256 and an index)")
    if version >= 2:
        if "encoding" not in data:
            raise ShardError(f"{url}: manifest has no 'encoding'")
        try:
            Encoding.from_manifest(data["encoding"])
        except WdspqError as e:
            raise ShardError(f"{url}: manifest encoding: {e}") from None
        f = data["encoding"].get("dictionary_file")
        if f is not None and not is_file_entry(f):
            raise ShardError(f"{url}: manifest encoding: dictionary_file needs name, bytes and sha256")
        if "stats" in data and data.get("stats_sha256") != stats_digest(data["stats"]):
            raise ShardError(f"{url}: the manifest's normalisation statistics do not match their sha256 (stats_sha256)")


def load_manifest(source: str, storage_options: dict[str, Any] | None = None) -> Manifest:
    """Read and check a manifest; errors name the manifest URL and what is wrong."""
    root, name = split_source(str(source))
    storage = open_storage(root, **(storage_options or {}))
    url = storage.url(name)
    try:  # before the read: if the manifest is replaced meanwhile, the first shard open says so
        stamp = storage.stamp(name)
    except WdspqError:
        stamp = None  # the read below fails and says why
    try:
        raw = storage.read_bytes(name)
    except WdspqError as e:
        try:
            missing = not storage.exists(name)
        except WdspqError:
            missing = False  # the storage itself fails (credentials, bucket): its own message says why
        if missing:
            raise ShardError(f"{url}: no manifest here; is this an exported shard folder?") from None
        raise ShardError(f"{url}: cannot read the manifest: {e}") from None
    data = parse_manifest(raw, url)
    return Manifest(data=data, storage=storage, id=hashlib.sha256(raw).hexdigest(), url=url, name=name, stamp=stamp)


def parse_manifest(raw: bytes, url: str) -> dict[str, Any]:
    """The one reader of manifest bytes: JSON, format, a readable version, the required keys and every
    shard entry checked; a ShardError naming `url` and what is wrong."""
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise ShardError(f"{url}: manifest is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise ShardError(f"{url}: not a wdspq manifest (format {data.get('format') if isinstance(data, dict) else None!r})")
    if data.get("version") not in READABLE_VERSIONS:
        raise ShardError(
            f"{url}: manifest format version {data.get('version')!r} is not supported (this wdspq reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}); re-export the table with this wdspq (wdspq export)"
        )
    for key in ("shards", "sample_schema", "spec", "num_windows"):
        if key not in data:
            raise ShardError(f"{url}: manifest has no {key!r}")
    _check_entries(url, data)
    return data


def build_manifest(*, config: dict[str, Any], digest: str, table_name: str, table_meta: dict[str, Any],
                   spec: dict[str, Any], window_rules_version: int, resolved: dict[str, Any],
                   tokenizer: dict[str, Any], sample_schema: dict[str, dict[str, Any]], encoding: Encoding,
                   codec: SampleCodec, max_abs_error: int, num_windows: int, num_episodes: int,
                   stats: dict[str, Any], shards: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest of a finished export (docs/shards.md "manifest.json"): the one place its layout is
    written. `config` and `digest` are the export configuration and its identity, `sample_schema` the
    record layout in order, `stats` the normalisation statistics (their sha256 is added), `shards` the
    shard entries in shard order."""
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "wdspq_version": __version__,
        "export_config": config,
        "export_config_digest": digest,
        "table": {"name": table_name, **config["table"]},
        "table_meta": table_meta,
        "spec": spec,
        "window_rules_version": window_rules_version,
        "resolved": resolved,
        "tokenizer": tokenizer,
        "sample_schema": [{"key": k, **v} for k, v in sample_schema.items()],  # ordered: the record layout
        "encoding": {**encoding.to_dict(), "lossless": encoding.lossless, "max_abs_error": int(max_abs_error),
                     "describe": encoding.describe(), **tuning_entry(codec)},
        "num_windows": num_windows,
        "num_episodes": num_episodes,
        "seed": config["seed"],
        "shuffle": config["shuffle"],
        "samples_per_shard": config["samples_per_shard"],
        "stats": stats,
        "stats_sha256": stats_digest(stats),
        "shards": shards,
    }


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The bytes a manifest is written as (indented, keys sorted: byte-identical for the same export)."""
    return json.dumps(manifest, indent=1, sort_keys=True).encode()
