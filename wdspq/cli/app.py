"""The `wdspq` parser (every command in COMMANDS) and main(): exit codes, one-line errors, signals."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from concurrent.futures import BrokenExecutor
from typing import Any

from .. import interrupt
from .._version import __version__
from ..errors import WdspqError
from .build import add_build
from .common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    Register,
    UsageError,
    _desc,
    _formatter,
    _one_line,
    _os_error_text,
    _Parser,
    _positive_float,
)
from .demo import add_demo
from .info import add_info, add_validate
from .shards import add_export, add_verify
from .show import add_show

COMMANDS: list[Register] = [add_build, add_export, add_verify, add_validate, add_info, add_show, add_demo]


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
    from ..storage.s3_time import S3_TIMEOUT_ENV

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
    from ..storage.s3_time import S3_TIMEOUT_ENV

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
    except BrokenExecutor as e:  # a worker process died: most often the SIGTERM sent to the whole group
        if debug:
            traceback.print_exc()
        if interrupt.requested():  # (the pool waited a moment for our own SIGTERM)
            print(f"wdspq: interrupted{hint}", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(f"wdspq: error: a worker process died unexpectedly ({type(e).__name__}: {_one_line(str(e))}){hint}",
              file=sys.stderr)
        return EXIT_ERROR
