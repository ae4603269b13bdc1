"""`wdspq validate` and `wdspq info` (a table, an export or a mixture file)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import WdspqError
from .common import (
    EXIT_ERROR,
    _desc,
    _formatter,
    is_export_source,
)
from .summary import format_export, format_summary, table_summary


def add_validate(sub: Any) -> None:
    p = sub.add_parser(
        "validate",
        help="check a table against the schema",
        description=_desc(
            "Check a table against its metadata (schema version 2; version 1 tables are read as version 2): "
            "every stream's columns and types, widths, timestamps (finite, strictly increasing), NaN/inf values, "
            "empty episodes, stream/timestamp lengths, duplicate ids, image and clip bytes (images decoded; "
            "clips opened, their first frame decoded and their frames counted against the frame timestamps, "
            "every frame decoded with --full-media), frame sizes, every stream's rate against its timestamps, Parquet page "
            "checksums (a table without them is valid, with a note). Exits 0 if valid, 2 with the first violation."
        ),
        formatter_class=_formatter,
    )
    p.add_argument("table", metavar="TABLE", help="the table file (a path or s3://bucket/key.parquet)")
    p.add_argument("--full-media", action="store_true", help="decode every video frame, not only the first")
    p.add_argument("--all", action="store_true", help="list every violation found (one per line), not only the first")
    p.set_defaults(func=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    from ..table.validate import validate_table

    try:
        meta = validate_table(args.table, full_media=args.full_media)
    except WdspqError as e:
        violations = getattr(e, "violations", None)
        if args.all and violations:
            for v in violations:
                print(f"wdspq: error: {v}", file=sys.stderr)
            return EXIT_ERROR
        raise
    from ..table.file import has_page_checksums

    streams = ", ".join(f"{st.name} ({st.kind})" for st in meta.streams)
    print(f"{args.table}: valid ({meta.num_episodes} episodes; streams: {streams})")
    if has_page_checksums(args.table) is False:
        print(f"{args.table}: note: the table has no page checksums (written by an older wdspq or another "
              "tool), so a changed byte inside a data page cannot be detected; rebuild it with `wdspq build` "
              "to add them")
    return 0


def add_info(sub: Any) -> None:
    p = sub.add_parser(
        "info",
        help="print a short summary of a table or an export",
        description=_desc(
            "TABLE: print its episodes, streams (dimensions, rates, frame and image sizes), total duration and "
            "file size. SHARDS (an export folder, its manifest.json or s3://bucket/prefix): print its window "
            "spec, windows, shards, bytes, encoding, tokenizer and the table it was made from. MIXTURE.json (a "
            "mixture file, docs/mixtures.md): its sources, weights, windows and passes per epoch."
        ),
        formatter_class=_formatter,
    )
    p.add_argument("source", metavar="TABLE|SHARDS|MIXTURE",
                   help="a table file, an export folder / manifest / s3:// prefix, or a mixture file")
    p.set_defaults(func=run_info)


def run_info(args: argparse.Namespace) -> int:
    src = str(args.source)
    from ..mixture import is_mixture_file

    if is_mixture_file(src):
        from .mixture import run_mixture_info

        return run_mixture_info(src)
    if is_export_source(src):
        from ..shardfmt import load_manifest

        print(format_export(load_manifest(src)))
        return 0
    print(format_summary(table_summary(src)))
    return 0

