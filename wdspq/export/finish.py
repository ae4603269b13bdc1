"""The export's last step and its clean-up: the manifest committed last, then the spill folder, staging
files and the files of a replaced export removed (docs/shards.md, docs/reliability.md).

The manifest's layout is `shardfmt.manifest.build_manifest`'s; this module decides when it is written:
after every shard and the zstd dictionary are committed, and only if no SIGTERM arrived and the
output's lock is still held, so an export without its manifest is always visibly unfinished.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .. import interrupt
from ..shardfmt import MANIFEST_NAME, Encoding, SampleCodec
from ..shardfmt.manifest import build_manifest, manifest_bytes
from ..shardfmt.names import SHARD_PREFIX, is_export_file
from ..shardfmt.tuning import DICTIONARY_NAME
from ..storage import Storage
from ..windows import WINDOW_RULES_VERSION, WindowSpec
from .phases import remove_spill_staging
from .plan import SPILL_PREFIX


def remove_staging(spill_root: Path, storage: Storage, pids: Iterable[int] | None = None) -> None:
    """Partial spill and staging files: of the processes `pids` (workers terminated mid-write), or with
    None of every earlier run that died (the caller holds the lock, so none is in use); they can be
    large and would keep a full disk full."""
    pids = None if pids is None else list(pids)
    remove_spill_staging(spill_root, pids)
    storage.remove_staging(pids)


def finish_export(*, ds: Any, enc: Encoding, codec: SampleCodec, config: dict[str, Any], digest: str,
                  storage: Storage, out: str, table: str, spec: WindowSpec, spill_root: Path, own_spill: bool,
                  entries: list[dict[str, Any]], frame_error: int, stats: dict[str, Any], lock: Any) -> dict[str, Any]:
    """Commit the dictionary and the manifest of a finished export, then clean up; the manifest dict."""
    manifest = build_manifest(
        config=config, digest=digest, table_name=Path(table).name, table_meta=json.loads(ds.meta.to_json()),
        spec=spec.to_dict(), window_rules_version=WINDOW_RULES_VERSION, resolved=ds.rspec.summary(),
        tokenizer=dict(ds.tokenizer_id), sample_schema=ds.sample_schema(), encoding=enc, codec=codec,
        max_abs_error=frame_error, num_windows=len(ds), num_episodes=ds.num_episodes,
        stats={f: st.to_dict() for f, st in stats.items()}, shards=entries)
    if codec.dictionary is not None:
        storage.put_bytes(DICTIONARY_NAME, codec.dictionary)  # before the manifest that names it
    elif storage.exists(DICTIONARY_NAME):  # of a replaced export
        storage.delete(DICTIONARY_NAME)
    interrupt.check()  # a SIGTERM that arrived after the pools: no manifest, the re-run finishes
    lock.check()
    # The manifest decides the outcome: the export is complete once it is committed. A SIGTERM from here on
    # lets the clean-up run to its end (a re-run that finds the export complete writes nothing, so it would
    # never remove a spill folder left behind) and the CLI keeps the outcome (docs/reliability.md).
    with interrupt.shielded():
        storage.put_bytes(MANIFEST_NAME, manifest_bytes(manifest))
        if own_spill:
            shutil.rmtree(spill_root, ignore_errors=True)
            if not out.startswith("s3://"):  # spill folders of interrupted exports of other configurations
                for p in Path(out).glob(SPILL_PREFIX + "*"):  # (the lock on out: no other export is using one)
                    shutil.rmtree(p, ignore_errors=True)
        remove_staging(spill_root, storage)  # with --spill-dir: partial spill files of killed runs
        keep = {e["name"] for e in entries} | {e["index"]["name"] for e in entries}
        for name in storage.list(SHARD_PREFIX):
            if is_export_file(name) and name not in keep:  # of a replaced, larger export
                storage.delete(name)
    return manifest
