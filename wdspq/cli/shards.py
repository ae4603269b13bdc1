"""`wdspq export` and `wdspq verify`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from .. import interrupt
from ..errors import WdspqError
from ..shardfmt.encoding import (
    COMPRESSIONS,
    DEFAULT_ENCODING,
    FRAME_CODECS,
    LAYOUT_CHOICES,
    SUBSAMPLINGS,
    Encoding,
)
from .common import (
    _add_progress,
    _bytes_text,
    _desc,
    _formatter,
    _int_at_least,
    _one_line,
    _progress,
    add_seed_arg,
    add_tokenizer_arg,
)
from .spec_args import add_spec_args, spec_from_args

EXIT_FAIL = 1


# ---------------------------------------------------------------------------------------------------
# wdspq export


def add_export(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="write pre-windowed WebDataset shards from a table",
        description=_desc(
            "Cut every window of TABLE (same window function as the map-style dataset) and write them as "
            "WebDataset tar shards, each with an index sidecar (every sample's byte offset and length), plus "
            "manifest.json (spec, tokenizer, sample schema, encoding, per-shard sizes and sha256, "
            "normalisation statistics) to OUT, a folder or s3://bucket/prefix. The order is shuffled across "
            "shards by --seed; the output is byte-identical for any --workers.\n\n"
            "Encoding (docs/shards.md has the measurements): by default (--layout auto) frames stay raw and "
            "are shared: each segment of --segment-windows consecutive windows of an episode stores its "
            "distinct frames (and action/state rows) once, in a zstd frame pack before its samples, and each "
            "sample is a small zstd-3 record referring to it (lossless, several times smaller than "
            "self-contained samples on overlapping windows; a plain webdataset pipeline needs the README's "
            "decoder). The records are tuned on a few episodes' windows: float time series stored as a delta "
            "and a zstd dictionary (samples.zdict, next to the manifest), each only where it makes them "
            "smaller. --layout per-sample keeps every sample self-contained, one sample.npy.zst record with "
            "its own frames. --frame-codec png|webp stores each frame as a lossless image member; jpeg is "
            "lossy (--jpeg-quality, --jpeg-subsampling 444|420) and the manifest records its largest pixel "
            "error. --compression none keeps the record uncompressed (largest, no decode work). Image codecs "
            "and --compression none are per-sample only.\n\n"
            "--dry-run prints windows, shards, bytes/sample (measured by encoding real windows), total "
            "bytes, amplification versus the table, peak scratch space and free space, and writes nothing; "
            "an export that would not fit is refused unless --force.\n\n"
            "Shards appear under their final names only when complete and the manifest is written last. "
            "An interrupted export keeps its spill folder: re-run the same command to reuse what is done. "
            "An OUT holding an export with another configuration is refused unless --overwrite. One export "
            "writes into OUT at a time: a second is refused, naming the running one (host, pid, since); the lock "
            "of a crashed export is taken over (docs/reliability.md). SIGTERM or Ctrl-C stops the export with "
            "exit code 130; re-run the same command to resume."
        ),
        formatter_class=_formatter,
    )
    p.add_argument("table", metavar="TABLE", help="the table file")
    p.add_argument("out", metavar="OUT", help="output folder or s3://bucket/prefix")
    add_spec_args(p)
    add_tokenizer_arg(p)
    p.add_argument("--samples-per-shard", type=_int_at_least(1), default=1000, metavar="N",
                   help="samples per shard (default 1000)")
    add_seed_arg(p, "shuffle seed")
    p.add_argument("--no-shuffle", action="store_true", help="keep the canonical window order")
    p.add_argument("--workers", type=_int_at_least(1), default=1, metavar="W", help="export processes (default 1)")
    e = p.add_argument_group("encoding")
    e.add_argument("--frame-codec", choices=FRAME_CODECS, default=DEFAULT_ENCODING.frames,
                   help=f"how frames are stored (default {DEFAULT_ENCODING.frames}; png/webp lossless, jpeg lossy)")
    e.add_argument("--compression", choices=COMPRESSIONS, default=DEFAULT_ENCODING.compression,
                   help=f"compression of the sample record (default {DEFAULT_ENCODING.compression})")
    e.add_argument("--zstd-level", type=_int_at_least(1), default=DEFAULT_ENCODING.level, metavar="L",
                   help=f"zstd level, 1..22 (default {DEFAULT_ENCODING.level})")
    e.add_argument("--no-delta", action="store_true",
                   help="zstd: store float time series as they are (default: as a second-order delta where that "
                        "makes them smaller; lossless)")
    e.add_argument("--no-dictionary", action="store_true",
                   help="zstd: no dictionary (default: one trained on the table's windows, kept only if it makes "
                        "held-out windows smaller; written next to the manifest)")
    e.add_argument("--layout", choices=LAYOUT_CHOICES, default="auto",
                   help="shared-frames: each segment of consecutive windows of an episode stores its distinct "
                        "frames once, in a frame pack before its samples (several times smaller; raw frames, zstd "
                        "only; docs/shards.md 'Shared frames'); per-sample: every sample holds its own frames (one "
                        "member per sample, or one per frame with an image codec); auto (default): shared-frames "
                        "with --frame-codec raw and --compression zstd, per-sample otherwise")
    e.add_argument("--segment-windows", type=_int_at_least(1), default=DEFAULT_ENCODING.segment, metavar="N",
                   help=f"shared frames: windows per frame pack (default {DEFAULT_ENCODING.segment})")
    e.add_argument("--pack-level", type=_int_at_least(1), default=DEFAULT_ENCODING.pack_level, metavar="L",
                   help=f"shared frames: zstd level of the frame packs (default {DEFAULT_ENCODING.pack_level})")
    e.add_argument("--jpeg-quality", type=_int_at_least(1), default=DEFAULT_ENCODING.quality, metavar="Q",
                   help=f"JPEG quality, 1..100 (default {DEFAULT_ENCODING.quality})")
    e.add_argument("--jpeg-subsampling", choices=SUBSAMPLINGS, default=DEFAULT_ENCODING.subsampling,
                   help="JPEG chroma subsampling (default 444; 420 is smaller, max error ~100 on coloured edges)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: --workers processes on this machine; ray: Ray tasks on a cluster (byte-identical output; "
                        "pip install 'wdspq[ray]')")
    p.add_argument("--address", metavar="ADDR", default=None,
                   help="with --engine ray: the cluster to join (e.g. auto, or host:6379; default: start a local one)")
    p.add_argument("--spill-dir", metavar="DIR", default=None,
                   help="scratch folder for the cut windows (default: hidden inside OUT, or $TMPDIR for S3; with "
                        "--engine ray on a cluster: a folder every node sees); kept if given")
    p.add_argument("--dry-run", action="store_true", help="print the size estimate and free space; write nothing")
    p.add_argument("--force", action="store_true", help="start even when the estimate says the disk is too small")
    p.add_argument("--overwrite", action="store_true", help="replace an export with another configuration in OUT")
    _add_progress(p)
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from ..export import export_shards, format_estimate

    spec = spec_from_args(args)
    encoding = Encoding(frames=args.frame_codec, compression=args.compression, level=args.zstd_level,
                        quality=args.jpeg_quality, subsampling=args.jpeg_subsampling,
                        delta=not args.no_delta, dictionary=not args.no_dictionary, layout=args.layout,
                        segment=args.segment_windows, pack_level=args.pack_level)
    t = time.perf_counter()
    report: dict[str, Any] = {}
    m = export_shards(
        args.table, args.out, spec,
        tokenizer=args.tokenizer,
        encoding=encoding,
        dry_run=args.dry_run,
        force=args.force,
        engine=args.engine,
        ray_address=args.address,
        spill_dir=args.spill_dir,
        samples_per_shard=args.samples_per_shard,
        seed=args.seed,
        shuffle=not args.no_shuffle,
        workers=args.workers,
        progress=_progress(args),
        overwrite=args.overwrite,
        report=report,
    )
    dt = time.perf_counter() - t
    if args.dry_run:
        print(format_estimate(m))
        return 0
    # The export is complete (its manifest committed): the command's outcome is decided, and a SIGTERM that
    # came during the clean-up after the manifest, or comes now, does not change it (docs/reliability.md).
    if report.get("outcome") in ("written", "complete"):
        interrupt.settle()
        interrupt.reset()
    n = m["num_windows"]
    total = sum(s["bytes"] for s in m["shards"])
    if report.get("outcome") == "complete":  # nothing was written: say so (the folder may even be read-only)
        print(f"already complete: {args.out} holds this export ({n} windows in {len(m['shards'])} shards, "
              f"{_bytes_text(total)}, all intact); nothing written")
        return 0
    print(
        f"wrote {n} windows in {len(m['shards'])} shards to {args.out} ({_bytes_text(total)}, "
        f"{total / max(n, 1):.0f} bytes/sample) in {dt:.1f} s ({n / max(dt, 1e-9):.0f} windows/s)"
    )
    return 0


# ---------------------------------------------------------------------------------------------------
# wdspq verify


def add_verify(sub: Any) -> None:
    p = sub.add_parser(
        "verify",
        help="check shards against their manifest (and the table)",
        description=_desc(
            "Check every shard of an export: size and sha256 against the manifest, that the tar parses and "
            "holds the manifest's sample count, that each sample decodes, that every index sidecar matches "
            "its sha256 and its offsets point at the samples. With --table, also check that the shard samples equal the "
            "map-style samples of the table (all windows, or a random --sample N), naming window_index and "
            "key of every mismatch.\n\n"
            "Prints one line per problem and a summary line. Exit code 0: pass; 1: verification failed; "
            "2: bad command-line input (e.g. a missing table)."
        ),
        formatter_class=_formatter,
    )
    p.add_argument("shards", metavar="SHARDS", help="export folder, its manifest.json, or s3://bucket/prefix")
    p.add_argument("--table", metavar="TABLE", help="compare the samples with this table's map-style samples")
    p.add_argument("--sample", type=_int_at_least(1), metavar="N", help="compare a random N windows (default: all)")
    add_seed_arg(p, "seed of the --sample choice")
    add_tokenizer_arg(p, export_first=True)
    _add_progress(p)
    p.set_defaults(func=run_verify)


def run_verify(args: argparse.Namespace) -> int:

    from ..shardfmt import load_manifest
    from ..verify import verify_shards

    if args.table is not None and not args.table.startswith("s3://") and not os.path.isfile(args.table):
        raise WdspqError(f"{args.table}: table file does not exist")
    if not args.shards.startswith("s3://") and not os.path.exists(args.shards):
        raise WdspqError(f"{args.shards}: no such export folder or manifest")
    try:
        load_manifest(args.shards)
    except WdspqError as e:
        print(f"FAIL {_one_line(str(e))}")
        print(f"verify FAILED: {args.shards}: the manifest cannot be used")
        return EXIT_FAIL
    report = verify_shards(
        args.shards,
        table=args.table,
        sample=args.sample,
        tokenizer=args.tokenizer,
        seed=args.seed,
        progress=_progress(args),
    )
    for problem in report.problems:
        print(f"FAIL {_one_line(str(problem))}")
    print(report.summary())
    sys.stdout.flush()
    return 0 if report.ok else EXIT_FAIL
