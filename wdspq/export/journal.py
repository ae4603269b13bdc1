"""The export's journal and what is already at the output: reusable shards, an existing manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import WdspqError
from ..shardfmt import MANIFEST_NAME
from ..shardfmt.manifest import entry_mismatch, is_file_entry, parse_manifest
from ..storage import Storage

JOURNAL_NAME = "journal.jsonl"  # inside the spill folder (local), one line per committed shard


def read_journal(path: Path, digest: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill: that shard is simply redone
        if isinstance(rec, dict) and rec.get("config") == digest and isinstance(rec.get("entry"), dict):
            out[rec["entry"]["name"]] = rec["entry"]
    return out


class Journal:
    """Append-only local journal: one fsync'd line per committed shard (O(1) per shard, any storage)."""

    def __init__(self, path: Path, digest: str) -> None:
        self.digest = digest
        self.f = open(path, "a", encoding="utf-8")

    def append(self, entry: dict[str, Any]) -> None:
        try:
            self.f.write(json.dumps({"config": self.digest, "entry": entry}, sort_keys=True) + "\n")
            self.f.flush()
            os.fsync(self.f.fileno())
        except OSError as e:
            raise WdspqError(f"{self.f.name}: cannot write the export journal: {e.strerror or e}") from None

    def close(self) -> None:
        try:
            self.f.close()
        except OSError:
            pass  # a line cut by a full disk: that shard is simply redone by the re-run


def _intact(storage: Storage, entry: dict[str, Any]) -> bool:
    try:
        return (storage.exists(entry["name"]) and storage.size(entry["name"]) == entry["bytes"]
                and entry_mismatch(entry, *storage.sha256(entry["name"])) is None)
    except WdspqError:
        return False


def shard_intact(storage: Storage, entry: dict[str, Any]) -> bool:
    """Whether the shard and its index have the journalled sizes and sha256 (reads them once)."""
    ix = entry.get("index")
    if not is_file_entry(ix):
        return False
    return _intact(storage, ix) and _intact(storage, entry)


def existing_manifest(storage: Storage) -> tuple[dict[str, Any] | None, str | None]:
    """The manifest already under the output (None if there is none) and why it is unusable, if it is."""
    if not storage.exists(MANIFEST_NAME):
        return None, None
    try:
        return parse_manifest(storage.read_bytes(MANIFEST_NAME), storage.url(MANIFEST_NAME)), None
    except WdspqError as e:
        return {}, f"it cannot be read ({e})"


def config_difference(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "it records no export configuration"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "it differs in " + ", ".join(keys) if keys else "its configuration differs"


