"""The window spec flags shared by `wdspq export` and `wdspq show` (one definition, the same windows)."""

from __future__ import annotations

import argparse
import os
import re
from typing import Any

from ..errors import WdspqError
from .common import (
    _int_at_least,
    _positive_float,
)

# `--frame-offsets -2,-1,0`: let a comma list of negative integers count as a value, not an option.
_NEGATIVE_LIST = re.compile(r"^-\d+$|^-\d*\.\d+$|^-?\d+(,\s*-?\d+)+$")


def _frame_offsets(text: str) -> list[int]:
    try:
        out = [int(p) for p in text.replace(" ", "").split(",") if p != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers (e.g. -2,-1,0)") from None
    if not out:
        raise argparse.ArgumentTypeError("give at least one frame offset (e.g. 0)")
    return out


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _allow_negative_lists(p: argparse.ArgumentParser) -> None:
    if hasattr(p, "_negative_number_matcher"):  # argparse internals; `--frame-offsets=-2,-1,0` always works
        p._negative_number_matcher = _NEGATIVE_LIST  # type: ignore[attr-defined]


def add_spec_args(p: argparse.ArgumentParser, title: str = "window spec") -> None:
    """The window spec flags (export; show for a table): one definition so both cut the same windows."""
    _allow_negative_lists(p)
    g = p.add_argument_group(title)
    g.add_argument("--acts-length-sec", type=_positive_float, default=None, help="action window length (default 1)")
    g.add_argument("--obs-length-sec", type=_positive_float, default=None,
                   help="observation window length (default: --acts-length-sec)")
    g.add_argument("--obs-offset-sec", type=_float, default=0.0, help="observation start relative to the anchor (default 0)")
    g.add_argument("--frame-offsets", type=_frame_offsets, default=[0], metavar="LIST",
                   help="video frame offsets, comma-separated (default 0; e.g. -2,-1,0)")
    g.add_argument("--stride", type=_int_at_least(1), default=1, help="anchor step in action rows (default 1)")
    g.add_argument("--full-windows-only", action="store_true", help="only anchors whose action window fits the episode")
    g.add_argument("--obs-resample", choices=("none", "linear", "nearest"), default="none",
                   help="observation rows by time (none) or resampled (default none)")
    g.add_argument("--obs-rate-hz", type=_positive_float, default=None,
                   help="resampling rate (default: the action rate)")
    g.add_argument("--obs-align", choices=("at_or_before", "at_or_after"), default="at_or_before",
                   help="a signal window's first row: the latest sample at or before its start (default, causal) "
                        "or the first at or after it (docs/windows.md)")
    g.add_argument("--max-text-tokens", type=_int_at_least(1), default=32, help="token ids per sample (default 32)")
    x = p.add_argument_group(f"{title}: explicit offsets (LeRobot's delta_timestamps; replace the length flags)")
    x.add_argument("--delta-timestamps", metavar="JSON|FILE", default=None,
                   help='per stream, offsets in seconds from the anchor, as JSON or a JSON file, e.g. '
                        '\'{"action": [0.0, 0.1], "observation.state": [-0.1, 0.0], "observation.images.top": [0.0]}\'; '
                        "streams not listed come as their one row at the anchor (docs/windows.md)")
    x.add_argument("--boundary", choices=("clamp", "pad"), default="clamp",
                   help="offsets outside a stream: its edge row, flagged (clamp, LeRobot's rule; default) or zeros (pad)")
    x.add_argument("--tolerance-s", type=_seconds, default=1e-4,
                   help="a row counts as present when a sample lies this close to its time (default 1e-4 s; "
                        "0: exact, up to float noise)")


def _seconds(text: str) -> float:
    """A finite number of seconds >= 0 (`--tolerance-s`, as `WindowSpec.from_delta_timestamps` takes it)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds >= 0")
    return v


def spec_from_args(args: argparse.Namespace) -> Any:
    """The WindowSpec the spec flags describe."""
    from ..windows import WindowSpec

    if getattr(args, "delta_timestamps", None) is not None:
        return _explicit_spec(args)
    if args.obs_rate_hz is not None and args.obs_resample == "none":
        raise WdspqError("--obs-rate-hz needs --obs-resample linear or nearest (without resampling rows keep their times)")
    return WindowSpec(
        acts_length_sec=args.acts_length_sec or 1.0,
        obs_length_sec=args.obs_length_sec if args.obs_length_sec is not None else args.acts_length_sec or 1.0,
        obs_offset_sec=args.obs_offset_sec,
        video_frame_offsets=tuple(args.frame_offsets),
        stride=args.stride,
        full_windows_only=args.full_windows_only,
        obs_resample=args.obs_resample,
        obs_rate_hz=args.obs_rate_hz,
        max_text_tokens=args.max_text_tokens,
        obs_align=getattr(args, "obs_align", "at_or_before"),
    )


def _explicit_spec(args: argparse.Namespace) -> Any:
    """The spec of `--delta-timestamps` (JSON text or a JSON file); the length flags may not be mixed in."""
    import json

    from ..windows import WindowSpec

    given = [f for f, v in (("--acts-length-sec", args.acts_length_sec), ("--obs-length-sec", args.obs_length_sec),
                            ("--obs-offset-sec", args.obs_offset_sec or None), ("--obs-rate-hz", args.obs_rate_hz),
                            ("--frame-offsets", args.frame_offsets != [0] or None),
                            ("--obs-resample", args.obs_resample != "none" or None),
                            ("--full-windows-only", args.full_windows_only or None),
                            ("--obs-align", getattr(args, "obs_align", "at_or_before") != "at_or_before" or None))
             if v is not None]
    if given:
        raise WdspqError(f"--delta-timestamps lists every stream's offsets; drop {', '.join(given)}")
    text = args.delta_timestamps
    if not text.lstrip().startswith("{"):
        try:
            with open(text) as f:
                text = f.read()
        except OSError as e:
            raise WdspqError(f"--delta-timestamps {args.delta_timestamps}: not JSON and not a readable file "
                             f"({e.strerror or e})") from None
    try:
        delta = json.loads(text)
    except ValueError as e:
        where = "" if text is args.delta_timestamps else f" {os.fspath(args.delta_timestamps)}"
        raise WdspqError(f"--delta-timestamps{where}: not valid JSON ({e})") from None
    return WindowSpec.from_delta_timestamps(delta, tolerance_s=args.tolerance_s, boundary=args.boundary,
                                            stride=args.stride, max_text_tokens=args.max_text_tokens)
