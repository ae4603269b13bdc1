"""`wdspq build synthetic|seed|hdf5|sim` and the `wdspq build` group (lerobot, robomimic: build_import)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..media import LOSSLESS_CODEC, VIDEO_CODECS
from .build_import import add_build_lerobot, add_build_robomimic
from .common import (
    Register,
    UsageError,
    _add_progress,
    _desc,
    _even_size,
    _floats,
    _formatter,
    _int_at_least,
    _name_group,
    _names,
    _positive_float,
    _progress,
    add_seed_arg,
    episodes_arg,
)
from .summary import _report_built


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
    p.add_argument("--video-codec", choices=VIDEO_CODECS, default=LOSSLESS_CODEC,
                   help="ffv1: lossless, byte-deterministic (default); h264: ~10x smaller, lossy, not byte-deterministic")
    add_seed_arg(p, "random seed")
    p.add_argument("--workers", type=_int_at_least(1), default=1, help="encoding processes (default 1)")
    p.add_argument("--row-group-size", type=_int_at_least(1), default=16, help="episodes per row group (default 16)")
    _add_progress(p)
    p.set_defaults(func=run_build_synthetic)


def run_build_synthetic(args: argparse.Namespace) -> int:
    from ..build import build_synthetic

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
    from ..build import build_from_seed

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
    p.add_argument("--video-codec", choices=VIDEO_CODECS, help="clip codec (default ffv1, lossless)")
    p.add_argument("--episodes", type=episodes_arg, metavar="LIST",
                   help="convert only these files, by position among the inputs (files as given, folders expanded sorted; e.g. 0,3,5-9)")
    _add_progress(p)
    p.set_defaults(func=run_build_hdf5)


def run_build_hdf5(args: argparse.Namespace) -> int:
    from ..build import Hdf5Layout, build_from_hdf5

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
    add_seed_arg(p, "random seed")
    _add_progress(p)
    p.set_defaults(func=run_build_sim)


def run_build_sim(args: argparse.Namespace) -> int:
    from ..build import build_sim

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


