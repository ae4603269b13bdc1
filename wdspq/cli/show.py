"""`wdspq show`: a PNG of one window (table or shards), one episode (table) or an export's statistics."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..errors import WdspqError
from .common import (
    _desc,
    _formatter,
    _int_at_least,
    add_tokenizer_arg,
    is_export_source,
)
from .spec_args import add_spec_args, spec_from_args


def add_show(sub: Any) -> None:
    p = sub.add_parser(
        "show",
        help="draw a window, an episode or an export's statistics as a PNG",
        description=_desc(
            "--window I: window I of a table or an export: per camera its frames at their offsets (masked "
            "frames hatched grey, each labelled with its offset and time relative to t0), the images, the "
            "actions and every observation stream against time (masked rows shaded), the task text and "
            "the window's identity. The same window from a table and from its shards gives the same PNG "
            "(for a table, give the spec flags the export used).\n\n"
            "--episode E (table): the whole episode on one time axis, thumbnails per camera at their own "
            "times (dropped frames in red) and the anchors of its windows.\n\n"
            "--stats (export): per stream and dimension mean ± std and min/max from the manifest.\n\n"
            "MIXTURE.json (a mixture file, docs/mixtures.md) --window I [--epoch E]: the mixture's sample I of "
            "epoch E (the order one process with no workers delivers), drawn like an export's window, with its "
            "source named in the title and on the terminal.\n\n"
            "Needs matplotlib: pip install 'wdspq[viz]'."
        ),
        formatter_class=_formatter,
    )
    p.add_argument("source", metavar="TABLE|SHARDS|MIXTURE",
                   help="a table file, an export folder / manifest / s3:// prefix, or a mixture file")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--window", type=_int_at_least(0), metavar="I", help="draw window I")
    what.add_argument("--episode", type=_int_at_least(0), metavar="E", help="draw episode E (table)")
    what.add_argument("--stats", action="store_true", help="draw the export's statistics (shards)")
    p.add_argument("--epoch", type=_int_at_least(0), default=0, metavar="E",
                   help="for a mixture file: the epoch whose samples --window counts (default 0)")
    p.add_argument("-o", "--out", required=True, metavar="PNG", help="the picture to write")
    add_spec_args(p, "window spec (for a table, as given to export; an export uses its own)")
    add_tokenizer_arg(p, export_first=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing PNG")
    p.set_defaults(func=run_show)


def run_show(args: argparse.Namespace) -> int:
    from .. import viz

    src, out = str(args.source), str(args.out)
    if os.path.exists(out) and not args.overwrite:
        raise WdspqError(f"{out}: exists; pass --overwrite to replace it")
    if os.path.abspath(out) == os.path.abspath(src):
        raise WdspqError(f"{out}: is the input")
    viz._plt()  # say how to install matplotlib before any data is read
    from ..mixture import is_mixture_file

    mixture = is_mixture_file(src)
    if args.epoch and not mixture:
        raise WdspqError(f"{src}: --epoch counts the samples of a mixture file's epoch; a table's or an export's "
                         "windows are numbered once for all epochs")
    if mixture:
        if args.window is None:
            raise WdspqError(f"{src}: a mixture file draws one of its samples (--window I [--epoch E]); for "
                             "--stats or --episode give one of its sources")
        from .mixture import mixture_window

        sample, ctx, what = mixture_window(src, args.window, args.epoch, args.tokenizer)
        viz.show_window(sample, out, ctx)
        print(what)
    elif args.stats:
        if not is_export_source(src):
            raise WdspqError(f"{src}: --stats draws an export's manifest statistics; give the export folder")
        import json

        from ..shardfmt import load_manifest
        from ..table import TableMeta

        m = load_manifest(src)
        viz.show_stats(m.data["stats"], out, TableMeta.from_json(json.dumps(m.data["table_meta"])))
    elif args.episode is not None:
        if is_export_source(src):
            raise WdspqError(f"{src}: --episode needs the table (an export holds windows, not episodes)")
        from ..table.episodes import EpisodeSource

        ds = EpisodeSource(src, spec_from_args(args), tokenizer=args.tokenizer)
        viz.show_episode(ds, args.episode, out)
    elif is_export_source(src):
        sample, ctx = viz.shards_window(src, args.window, args.tokenizer)
        viz.show_window(sample, out, ctx)
    else:
        sample, ctx = viz.table_window(src, args.window, spec_from_args(args), args.tokenizer)
        viz.show_window(sample, out, ctx)
    print(f"wrote {out}")
    return 0
