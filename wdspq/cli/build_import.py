"""`wdspq build lerobot` and `wdspq build robomimic`: registered in cli.build's BUILD_SOURCES."""

from __future__ import annotations

import argparse
from typing import Any

from ..media import LOSSLESS_CODEC, VIDEO_CODECS
from .common import (
    _add_progress,
    _desc,
    _formatter,
    _positive_float,
    _progress,
    episodes_arg,
)
from .summary import _report_built


def _add_selection(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--episodes", type=episodes_arg, metavar="LIST",
                   help=f"import only these {what} (e.g. 0,3,5-9)")
    p.add_argument("--split", metavar="NAME", help="import only the episodes of this split")
    p.add_argument("--video-codec", choices=VIDEO_CODECS, default=LOSSLESS_CODEC,
                   help="clip codec of the table: ffv1 (default, lossless: frames equal the decoded source frames) "
                        "or h264 (lossy yuv420p, ~10x smaller)")
    _add_progress(p)


def add_build_lerobot(sub: Any) -> None:
    p = sub.add_parser(
        "lerobot",
        help="import a local LeRobot dataset folder (codebase v2.0, v2.1, v3.0)",
        description=_desc(
            "Import a LeRobot dataset folder (nothing is downloaded; e.g. a folder from the Hugging Face cache). "
            "The layout is read from meta/info.json (codebase_version, fps, features, path templates). "
            "`action` becomes the actions stream; every other float feature (observation.state, ...) a signal "
            "stream of the same name; every video or image feature a camera of the same name, frame i at row "
            "i's timestamp; the episode's task the text; info.json's splits the split column. Videos are "
            "decoded with PyAV (AV1, H.264, HEVC, ...) and cut per episode out of multi-episode v3.0 files by "
            "their from/to timestamps, then re-encoded one clip per episode and camera. meta/stats.json is kept "
            "in the table's metadata. Details: docs/importers.md."
        ),
        formatter_class=_formatter,
    )
    p.add_argument("dataset", metavar="DATASET_DIR", help="the LeRobot dataset folder (holding meta/info.json)")
    p.add_argument("out", metavar="OUT", help="table file to write")
    _add_selection(p, "episode indices")
    p.set_defaults(func=run_build_lerobot)


def run_build_lerobot(args: argparse.Namespace) -> int:
    from ..build import build_from_lerobot

    build_from_lerobot(args.dataset, args.out, episodes=args.episodes, split=args.split, video_codec=args.video_codec,
                       progress=_progress(args), overwrite=args.overwrite)
    return _report_built(args.out)


def add_build_robomimic(sub: Any) -> None:
    p = sub.add_parser(
        "robomimic",
        help="import a robomimic HDF5 file (data/demo_N, mask/train|valid)",
        description=_desc(
            "Import a robomimic file: data/demo_N/actions -> actions; each obs key of (T, H, W, 3) uint8 "
            "(agentview_image, ...) -> a camera of that name; every other numeric obs key -> a signal stream of "
            "that name (one stream per key, flattened; depth maps are skipped and listed in the metadata). Row i "
            "is at i / rate, the rate from data.attrs['env_args'] env_kwargs.control_freq unless --rate is given. "
            "Text: --text, else the file's language instruction, else the env name. mask/<filter> -> the split "
            "column (train, then valid, else the first filter key); --split takes any filter key. "
            "Details: docs/importers.md."
        ),
        formatter_class=_formatter,
    )
    p.add_argument("file", metavar="FILE.hdf5", help="the robomimic HDF5 file")
    p.add_argument("out", metavar="OUT", help="table file to write")
    p.add_argument("--rate", type=_positive_float, metavar="HZ", help="control rate (default: from env_args)")
    p.add_argument("--text", metavar="SENTENCE", help="task sentence for every episode (default: from the file)")
    _add_selection(p, "demos (by N of demo_N)")
    p.set_defaults(func=run_build_robomimic)


def run_build_robomimic(args: argparse.Namespace) -> int:
    from ..build import build_from_robomimic

    build_from_robomimic(args.file, args.out, rate=args.rate, text=args.text, episodes=args.episodes, split=args.split,
                         video_codec=args.video_codec, progress=_progress(args), overwrite=args.overwrite)
    return _report_built(args.out)
