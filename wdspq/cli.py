"""The `wdspq` command line: `wdspq build synthetic|seed|hdf5|sim|lerobot|robomimic`, `validate`, `info`, ...

To add a command, write `def add_X(sub)` that adds one subparser to `sub` with `set_defaults(func=run_X)`
(where `run_X(args) -> int`) and append it to `COMMANDS`; `wdspq build` sources go in `BUILD_SOURCES`.
Errors from wdspq (and bad-input OSError/ValueError) print one line, `wdspq: error: ...`, and exit with
code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import textwrap
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import interrupt
from ._version import __version__
from .cli_import import add_build_lerobot, add_build_robomimic, episodes_arg
from .cli_shards import add_export, add_verify
from .cli_show import add_show
from .demo import add_demo
from .errors import WdspqError

Register = Callable[[Any], None]
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad command-line syntax or values (raised instead of argparse's multi-line usage message)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _desc(text: str) -> str:
    """Wrap each paragraph of a description (the raw formatter keeps our paragraph breaks)."""
    return "\n\n".join(textwrap.fill(" ".join(par.split()), 88) for par in text.split("\n\n"))


# ---------------------------------------------------------------------------------------------------
# argument types: reject bad values with a one-line message


def _int_at_least(lo: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{v} is too small (minimum {lo})")
        return v

    return parse


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not np.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return v


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct comma-separated names")
    return names


def _floats(text: str) -> list[float]:
    return [_positive_float(t) for t in text.split(",")]


def _name_group(text: str) -> tuple[str, str]:
    name, sep, group = text.partition("=")
    if not sep or not name or not group:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=GROUP (e.g. front=oakd_front_view/color)")
    return name, group


def _even_size(text: str) -> int:
    v = _int_at_least(2)(text)
    if v % 2:
        raise argparse.ArgumentTypeError(f"{v} is odd; video frames need an even size (yuv420p)")
    return v


def _add_progress(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--progress", dest="progress", action="store_true", default=None, help="show a progress bar (default: on a terminal)"
    )
    g.add_argument("--no-progress", dest="progress", action="store_false", help="do not show the progress bar")


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars go to stderr; by default only when it is a terminal, so logs and errors stay clean."""
    if args.progress is None:
        return sys.stderr.isatty()
    return bool(args.progress)


# ---------------------------------------------------------------------------------------------------
# wdspq build ...


def add_build_synthetic(sub: Any) -> None:
    p = sub.add_parser(
        "synthetic",
        help="generate a deterministic synthetic table",
        description=_desc(
            "Generate a synthetic table: 100 Hz actions (D=7), 50 Hz observations (S=12), a PNG image and one "
            "lossless FFV1 clip per camera per episode (each camera on its own clock, with its frame number drawn "
            "in and one timestamp per frame), varied episode lengths (0.6-1.4 x --seconds) and several task "
            "sentences. --frame-jitter and --frame-drop perturb the camera clocks, --force-hz adds a 6-D `force` "
            "signal at a high rate. The same --seed gives a byte-identical file for any --workers."
        ),
        formatter_class=_formatter,
    )
    p.add_argument("out", metavar="OUT", help="table file to write (e.g. data/table.parquet)")
    p.add_argument("--episodes", type=_int_at_least(1), default=20, help="number of episodes (default 20)")
    p.add_argument("--seconds", type=_positive_float, default=5.0, help="mean episode length in seconds (default 5)")
    p.add_argument("--image-size", type=_int_at_least(1), default=64, help="image height = width in pixels (default 64)")
    p.add_argument("--video-size", type=_even_size, default=96, help="video frame height = width, even (default 96)")
    p.add_argument("--fps", type=_positive_float, default=20, help="camera frame rate (default 20)")
    p.add_argument("--cameras", type=_names, default=["frames"], metavar="NAME,...",
                   help="camera names (default: one camera named frames)")
    p.add_argument("--camera-fps", type=_floats, metavar="FPS,...", help="frame rate per camera (default --fps for all)")
    p.add_argument("--frame-jitter", type=float, default=0.0, metavar="SEC",
                   help="uniform jitter of every frame time, in seconds (below half a frame interval; default 0)")
    p.add_argument("--frame-drop", type=float, default=0.0, metavar="P", help="probability that a frame is dropped (default 0)")
    p.add_argument("--force-hz", type=_positive_float, metavar="HZ", help="add a 6-D signal stream `force` at this rate")
    p.add_argument("--video-codec", choices=("ffv1", "h264"), default="ffv1",
                   help="ffv1: lossless, byte-deterministic (default); h264: ~10x smaller, lossy, not byte-deterministic")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=_int_at_least(1), default=1, help="encoding processes (default 1)")
    p.add_argument("--row-group-size", type=_int_at_least(1), default=16, help="episodes per row group (default 16)")
    _add_progress(p)
    p.set_defaults(func=run_build_synthetic)


def run_build_synthetic(args: argparse.Namespace) -> int:
    from .build import build_synthetic

    build_synthetic(
        args.out,
        episodes=args.episodes,
        seconds=args.seconds,
        image_size=args.image_size,
        video_size=args.video_size,
        fps=args.fps,
        seed=args.seed,
        workers=args.workers,
        row_group_size=args.row_group_size,
        progress=_progress(args),
        cameras=args.cameras,
        camera_fps=args.camera_fps,
        frame_jitter=args.frame_jitter,
        frame_drop=args.frame_drop,
        force_hz=args.force_hz,
        video_codec=args.video_codec,
        overwrite=args.overwrite,
    )
    return _report_built(args.out)


def add_build_seed(sub: Any) -> None:
    p = sub.add_parser(
        "seed",
        help="import a table in the seed project's layout",
        description=_desc(
            "Import a table written by the seed project's parquet_create.py: columns text, actions and "
            "observations (list<list<double>>, timestamp in column 0 of every row), image and video as file "
            "paths relative to the working directory or to the table's folder. Media bytes are inlined: the "
            "signal `observations`, the camera `frames` (clips keep their encoding; frame j is at j / fps) and "
            "the image `image`. Episode ids are seed-000000, seed-000001, ..."
        ),
        formatter_class=_formatter,
    )
    p.add_argument("seed_table", metavar="SEED_TABLE", help="the seed-layout Parquet file")
    p.add_argument("out", metavar="OUT", help="table file to write")
    _add_progress(p)
    p.add_argument("--missing-media", choices=("error", "skip"), default="error",
                   help="an image/clip file that does not exist: error (default) or skip (that episode's image or "
                        "clip stays empty, masks false; the count is reported)")
    p.set_defaults(func=run_build_seed)


def run_build_seed(args: argparse.Namespace) -> int:
    from .build import build_from_seed

    meta = build_from_seed(args.seed_table, args.out, progress=_progress(args), overwrite=args.overwrite,
                           missing_media=args.missing_media)
    for col, n in sorted(meta.extra.get("missing_media_skipped", {}).items()):
        print(f"skipped {n} missing {col} file(s): those episodes have no {col} (masks false)", file=sys.stderr)
    return _report_built(args.out)


def add_build_hdf5(sub: Any) -> None:
    p = sub.add_parser(
        "hdf5",
        help="convert HDF5 robot logs (one file per episode)",
        description=_desc(
            "Convert HDF5 logs, one file per episode (folders are searched for *.h5/*.hdf5). Each stream is a "
            "group holding one dataset per sample, named by its integer timestamp in nanoseconds; timestamps "
            "become float64 seconds (exact to float64 rounding). Each camera's frames (H, W, 3 uint8) keep "
            "their own timestamps (dropped frames stay gaps) and are encoded into one clip per episode: FFV1, "
            "lossless, by default; --video-codec h264 is ~10x smaller but lossy (yuv420p: max pixel error ~100 "
            "on coloured edges). The default layout is the seed's (signal observations, camera frames); change "
            "it with --layout and/or the flags.\n\n"
            "layout file (JSON, any subset): {\"actions_group\": ..., \"observations_group\": ..., "
            "\"frames_group\": ..., \"signals\": {NAME: GROUP}, \"cameras\": {NAME: GROUP}, "
            "\"text_dataset\": ..., \"video_codec\": \"ffv1\"|\"h264\"}"
        ),
        formatter_class=_formatter,
    )
    p.add_argument("inputs", metavar="FILES", nargs="+", help="HDF5 files or folders, then OUT (the table to write)")
    p.add_argument("--layout", metavar="FILE", help="JSON layout file (flags below override it)")
    p.add_argument("--actions-group", metavar="PATH", help="group of action datasets (default hand/right/policy_output)")
    p.add_argument(
        "--observations-group", metavar="PATH", help="group of observation datasets (default right/franka/end_effector_pose)"
    )
    p.add_argument("--frames-group", metavar="PATH", help="group of camera frames (default oakd_front_view/color; '' for none)")
    p.add_argument("--text-dataset", metavar="PATH", help="task sentence dataset (default task_description; '' for none)")
    p.add_argument("--camera", action="append", type=_name_group, metavar="NAME=GROUP",
                   help="a camera and its group of frames (repeat for more; replaces the default camera frames)")
    p.add_argument("--signal", action="append", type=_name_group, metavar="NAME=GROUP",
                   help="one more signal stream and its group (repeat for more)")
    p.add_argument("--video-codec", choices=("ffv1", "h264"), help="clip codec (default ffv1, lossless)")
    p.add_argument("--episodes", type=episodes_arg, metavar="LIST",
                   help="convert only these files, by position among the inputs (files as given, folders expanded sorted; e.g. 0,3,5-9)")
    _add_progress(p)
    p.set_defaults(func=run_build_hdf5)


def run_build_hdf5(args: argparse.Namespace) -> int:
    from .build import Hdf5Layout, build_from_hdf5

    if len(args.inputs) < 2:
        raise UsageError("wdspq build hdf5: give one or more HDF5 files (or folders) and then OUT")
    *files, out = args.inputs
    if Path(out).suffix.lower() in (".h5", ".hdf5", ".hdf", ".he5") or Path(out).is_dir():
        raise UsageError(f"wdspq build hdf5: the last argument is the table to write, got {out!r}")
    layout = Hdf5Layout.from_json(args.layout) if args.layout else Hdf5Layout()
    layout = layout.replace(
        actions_group=args.actions_group,
        observations_group=args.observations_group,
        frames_group=args.frames_group,
        text_dataset=args.text_dataset,
        video_codec=args.video_codec,
    )
    if args.camera:
        layout = layout.replace(frames_group="", cameras=dict(args.camera))
    if args.signal:
        layout = layout.replace(signals={**layout.signals, **dict(args.signal)})
    build_from_hdf5(files, out, layout=layout, progress=_progress(args), overwrite=args.overwrite, episodes=args.episodes)
    return _report_built(out)


def add_build_sim(sub: Any) -> None:
    p = sub.add_parser(
        "sim",
        help="render a simulated 2-camera table with MuJoCo (realistic frames)",
        description=_desc(
            "Render episodes of a MuJoCo scene: a two-link arm driven by a seeded smoothed-random policy among "
            "falling objects. Actions (2-D torques) at 20 Hz, joint state (4-D) at 100 Hz, cameras front "
            "(20 fps, fixed) and wrist (12.5 fps, on the arm), each frame with its own timestamp, lossless "
            "FFV1 clips, a task sentence per episode. Deterministic for --seed. Needs pip install "
            "'wdspq[sim]'; headless rendering uses MUJOCO_GL=egl (set by default)."
        ),
        formatter_class=_formatter,
    )
    p.add_argument("out", metavar="OUT", help="table file to write (e.g. data/sim.parquet)")
    p.add_argument("--episodes", type=_int_at_least(1), default=8, help="episodes (default 8)")
    p.add_argument("--seconds", type=_positive_float, default=4.0, help="episode length in seconds (default 4)")
    p.add_argument("--video-size", type=_int_at_least(8), default=96, help="frame height and width (default 96)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed (default 0)")
    _add_progress(p)
    p.set_defaults(func=run_build_sim)


def run_build_sim(args: argparse.Namespace) -> int:
    from .build import build_sim

    build_sim(args.out, episodes=args.episodes, seconds=args.seconds, video_size=args.video_size, seed=args.seed,
              progress=_progress(args), overwrite=args.overwrite)
    return _report_built(args.out)


BUILD_SOURCES: list[Register] = [add_build_synthetic, add_build_seed, add_build_hdf5, add_build_sim, add_build_lerobot,
                                 add_build_robomimic]


def add_build(sub: Any) -> None:
    p = sub.add_parser(
        "build",
        help="write a table (synthetic, seed layout, HDF5 logs, MuJoCo simulation, LeRobot, robomimic)",
        description=_desc(
            "Write the canonical episode table. The file appears under its final name only when complete: "
            "a failed or interrupted build leaves nothing there."
        ),
        formatter_class=_formatter,
    )
    bsub = p.add_subparsers(dest="source", metavar="SOURCE", required=True)
    for register in BUILD_SOURCES:
        register(bsub)
    for sp in bsub.choices.values():
        sp.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (inputs are never overwritten)")


def _report_built(out: str | os.PathLike) -> int:
    print(f"wrote {out}")
    print(format_summary(table_summary(out)))
    return 0


# ---------------------------------------------------------------------------------------------------
# wdspq validate / info


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
    from .validate import validate_table

    try:
        meta = validate_table(args.table, full_media=args.full_media)
    except WdspqError as e:
        violations = getattr(e, "violations", None)
        if args.all and violations:
            for v in violations:
                print(f"wdspq: error: {v}", file=sys.stderr)
            return EXIT_ERROR
        raise
    from .table_file import has_page_checksums

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
    from .mixture import is_mixture_file

    if is_mixture_file(src):
        from .cli_mixture import run_mixture_info

        return run_mixture_info(src)
    if src.startswith("s3://") or os.path.isdir(src) or src.endswith(".json"):
        from .shardfmt import load_manifest

        print(format_export(load_manifest(src)))
        return 0
    print(format_summary(table_summary(src)))
    return 0


def format_export(m: Any) -> str:
    """An export's manifest as a few aligned lines (no shard is read)."""
    d = m.data
    n, total = m.num_windows, sum(int(s.get("bytes", 0)) for s in m.shards)
    spec = d["spec"]
    tok = d.get("tokenizer", {})
    table = d.get("table", {})
    enc = d.get("encoding", {}).get("describe") or ("raw frames, raw record (lossless)" if m.version == 1 else "?")
    lines = [
        ("export", f"{m.url} (format v{m.version}, wdspq {d.get('wdspq_version', '?')})"),
        ("spec", ", ".join(f"{k}={v}" for k, v in spec.items() if k != "overrides" or v)),
        ("windows", f"{n:,} from {d.get('num_episodes', '?')} episodes, seed {d.get('seed')}, "
                    f"{'shuffled' if d.get('shuffle') else 'canonical order'}"),
        ("shards", f"{len(m.shards):,} of up to {d.get('samples_per_shard')} samples"),
        ("bytes", f"{_bytes_text(total)} ({total / max(n, 1):,.0f} per sample)"),
        ("encoding", enc + (f"; max pixel error {m.max_abs_error}" if m.max_abs_error else "")),
        ("tokenizer", f"{tok.get('requested', '?')} ({tok.get('class')}, {tok.get('vocab_size')} tokens, "
                      f"vocab sha256 {str(tok.get('vocab_sha256'))[:12]})"),
        ("table", f"{table.get('name')} ({_bytes_text(int(table.get('bytes', 0)))})"),
        ("keys", ", ".join(e["key"] for e in d["sample_schema"])),
    ]
    return "\n".join(f"{k:<11}{v}" for k, v in lines)


def table_summary(path: str | os.PathLike) -> dict[str, Any]:
    """Facts about a table for humans: metadata plus durations, read from the `action_ts` column only."""
    import pyarrow.compute as pc

    from .schema import read_meta
    from .table_file import open_parquet, read_row_group

    meta = read_meta(path)
    pf = open_parquet(path)
    durations = []
    for g in range(pf.num_row_groups):
        arr = read_row_group(pf, path, g, [meta.actions.ts_column]).column(0).combine_chunks()
        lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        values = arr.flatten().to_numpy(zero_copy_only=False)
        off = np.concatenate([[0], np.cumsum(lengths)])
        ok = lengths > 0
        durations.append(values[off[1:][ok] - 1] - values[off[:-1][ok]])
    d = np.concatenate(durations) if durations else np.zeros(0)
    return {
        "path": str(path),
        "file_bytes": Path(path).stat().st_size,
        "row_groups": pf.num_row_groups,
        "episodes": pf.metadata.num_rows,
        "meta": meta,
        "duration_total_s": float(d.sum()),
        "duration_min_s": float(d.min()) if d.size else 0.0,
        "duration_mean_s": float(d.mean()) if d.size else 0.0,
        "duration_max_s": float(d.max()) if d.size else 0.0,
    }


def _bytes_text(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _duration_text(s: float) -> str:
    h, rem = divmod(int(round(s)), 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


def format_summary(s: dict[str, Any]) -> str:
    """Render `table_summary` as a few aligned lines."""
    m = s["meta"]
    lines = [
        ("table", f"{s['path']} ({_bytes_text(s['file_bytes'])}, {s['row_groups']} row groups, format v{m.read_as})"),
        ("episodes", str(s["episodes"])),
    ]
    for st in m.streams:
        rate = f" at {st.rate_hz:.6g} {'fps' if st.kind == 'camera' else 'Hz'}" if st.rate_hz else ""
        if st.kind in ("actions", "signal"):
            what = f"{st.kind}, {'D' if st.kind == 'actions' else 'S'}={st.width}{rate}"
        elif st.kind == "camera":
            codec = f", {st.codec}{' lossless' if st.lossless else ' lossy' if st.lossless is False else ''}" if st.codec else ""
            what = f"camera, {st.height}x{st.frame_width} (HxW){rate}{codec}"
        else:
            what = f"image, {st.height}x{st.frame_width} (HxW)"
        lines.append((st.name, what))
    lines += [
        (
            "duration",
            f"{_duration_text(s['duration_total_s'])} total; per episode {s['duration_min_s']:.1f} s min, "
            f"{s['duration_mean_s']:.1f} s mean, {s['duration_max_s']:.1f} s max",
        ),
    ]
    if m.source:
        lines.append(("source", m.source))
    width = max(13, *(len(k) + 1 for k, _ in lines))  # long stream names (observation.images.front) stay aligned
    return "\n".join(f"{k:<{width}}{v}" for k, v in lines)


COMMANDS: list[Register] = [add_build, add_export, add_verify, add_validate, add_info, add_show, add_demo]


# ---------------------------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    """The full parser: every function in COMMANDS adds its subcommand."""
    parser = _Parser(
        prog="wdspq",
        description=_desc(
            "wdspq: robot-learning episodes from one Parquet table into PyTorch training windows.\n"
            "Run `wdspq COMMAND --help` for each command."
        ),
        formatter_class=_formatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors (accepted anywhere on the line)")
    parser.add_argument("--version", action="version", version=f"wdspq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(sub)
    for name in S3_COMMANDS:
        sub.choices[name].add_argument(
            "--s3-timeout", type=_positive_float, default=None, metavar="SECONDS",
            help="most seconds one S3 request may take, every retry included, before the command fails naming the "
                 "endpoint and object (default: $WDSPQ_S3_TIMEOUT, else 60)")
    _add_debug(sub)
    return parser


S3_COMMANDS = ("export", "verify", "info", "show", "validate")  # the commands that may read or write s3:// paths


def _add_debug(sub: Any) -> None:
    """List `--debug` in every sub-command's help (main() takes it from anywhere on the line)."""
    for p in set(sub.choices.values()):
        if "--debug" not in p._option_string_actions:
            p.add_argument("--debug", action="store_true", help="show the traceback of an error")
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_debug(action)


def _one_line(message: str) -> str:
    return " ".join(str(message).split()) or "unknown error"


def _os_error_text(e: OSError) -> str:
    if e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return str(e)


_Terminated = interrupt.Terminated
_on_sigterm = interrupt.on_sigterm


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 error, 130 interrupted)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    cut = args_list.index("--") if "--" in args_list else len(args_list)
    debug = "--debug" in args_list[:cut]
    if debug:
        args_list = [a for i, a in enumerate(args_list) if not (a == "--debug" and i < cut)]
    previous = previous_alarm = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        previous_alarm = signal.signal(signal.SIGALRM, interrupt.on_alarm)  # a SIGTERM raised once safe
    except ValueError:  # not the main thread
        pass
    from .storage.s3_time import S3_TIMEOUT_ENV

    env_timeout = os.environ.get(S3_TIMEOUT_ENV)
    hint = "; re-run the same command to resume (committed shards are kept)" if "export" in args_list[:1] else ""
    interrupt.reset()
    interrupt.settle(False)
    code: int | None = None
    try:
        try:
            code = _run(args_list, debug, hint)
        except _Terminated:  # landed in _run's own error handling, or just after it returned
            if code is None:
                print(f"wdspq: interrupted{hint}", file=sys.stderr)
                code = EXIT_INTERRUPTED
        return code
    finally:
        interrupt.settle()  # from here a SIGTERM does not change the outcome (our handler stays until the end)
        if env_timeout is None:
            os.environ.pop(S3_TIMEOUT_ENV, None)
        else:
            os.environ[S3_TIMEOUT_ENV] = env_timeout
        if previous_alarm is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous_alarm)
        interrupt.reset()  # handled: a later call in this process (an API user, a test) starts clean
        if previous is not None:  # the program itself: a SIGTERM during shutdown exits with this code
            exit_code = EXIT_ERROR if code is None else code
            signal.signal(signal.SIGTERM, interrupt.exit_with(exit_code) if argv is None else previous)
        if argv is not None:
            interrupt.settle(False)  # our handler is gone: leave the module as an API user expects it


def _run(args_list: list[str], debug: bool, hint: str) -> int:
    """Parse and run one command; errors and interruptions become a one-line message and an exit code."""
    from .storage.s3_time import S3_TIMEOUT_ENV

    try:
        args = make_parser().parse_args(args_list)
        if getattr(args, "s3_timeout", None) is not None:  # S3Storage objects (and worker processes) read it
            os.environ[S3_TIMEOUT_ENV] = repr(float(args.s3_timeout))
        code = int(args.func(args) or 0)
        if interrupt.requested():  # a SIGTERM whose exception was swallowed (e.g. raised in a finalizer)
            print(f"wdspq: interrupted{hint}", file=sys.stderr)
            return EXIT_INTERRUPTED
        return code
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_ERROR)
    except UsageError as e:
        print(f"wdspq: error: {_one_line(str(e))}", file=sys.stderr)
        return EXIT_ERROR
    except (WdspqError, OSError, ValueError) as e:
        if debug:
            traceback.print_exc()
        if interrupt.requested():  # the error is a consequence of the SIGTERM (e.g. workers it stopped)
            print(f"wdspq: interrupted{hint}", file=sys.stderr)
            return EXIT_INTERRUPTED
        text = _os_error_text(e) if isinstance(e, OSError) and not isinstance(e, WdspqError) else str(e)
        print(f"wdspq: error: {_one_line(text)}", file=sys.stderr)
        return EXIT_ERROR
    except (KeyboardInterrupt, _Terminated):
        if debug:
            traceback.print_exc()
        print(f"wdspq: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
