"""SIGTERM as an orderly stop: a flag that is always set, and an exception raised only where it is safe.

The CLI installs `on_sigterm` (and `on_alarm`). The handler raises `Terminated` in the main thread at
once, so commands clean up in their `finally` blocks, except where an exception would be lost or do
harm:

- inside a finalizer (`__del__`, a `weakref.finalize` callback) Python prints and swallows it (the
  command would then "succeed"), and inside `concurrent.futures` it can corrupt the pool (a hang): there
  the handler looks again 50 ms later (SIGALRM) until the main thread is somewhere safe;
- inside `deferred()` (the export while its pools run) it only sets the flag; the export calls
  `check()` at safe points;
- inside `shielded()` (an export's manifest commit and clean-up) it only sets the flag: the export is
  complete once its manifest is committed, and the CLI's `export` keeps that outcome.

`requested()` lets the CLI exit non-zero even if an exception was lost somewhere all the same.
Once the command has finished (`settle()`), a SIGTERM no longer changes its outcome.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

_requested = threading.Event()
_settled = [False]
_defer = [0]
_RETRY_SEC = 0.05
_UNSAFE_FILES = ("weakref.py", "concurrent/futures/process.py", "concurrent/futures/thread.py",
                 "concurrent/futures/_base.py", "multiprocessing/queues.py", "multiprocessing/util.py")


class Terminated(BaseException):
    """SIGTERM, turned into an exception so commands clean up their temporary files."""


def _unsafe(frame: FrameType | None) -> bool:
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or code.co_filename.replace("\\", "/").endswith(_UNSAFE_FILES):
            return True
        frame = frame.f_back
    return False


def _raise_when_safe(frame: FrameType | None) -> None:
    if _defer[0]:
        return  # the deferred block checks the flag itself
    if _unsafe(frame):
        try:
            signal.setitimer(signal.ITIMER_REAL, _RETRY_SEC)  # look again shortly (on_alarm)
        except (ValueError, OSError):
            pass
        return
    raise Terminated()


def on_sigterm(signum: int, frame: Any) -> None:
    """The SIGTERM handler: set the flag; raise now if that is safe, else as soon as it is."""
    if _settled[0]:
        return  # the command has finished: its result stands
    _requested.set()
    _raise_when_safe(frame)


def on_alarm(signum: int, frame: Any) -> None:
    """The SIGALRM handler: a SIGTERM that could not be raised yet is raised once that is safe."""
    if _requested.is_set() and not _settled[0]:
        _raise_when_safe(frame)


def settle(done: bool = True) -> None:
    """Mark the command finished (`done=False`: a new one starts): from then on SIGTERM is ignored."""
    _settled[0] = done


def exit_with(code: int) -> Any:
    """A SIGTERM handler for after a finished command: exit at once with its exit code (the process was
    told to stop and has nothing left to do but its interpreter shutdown)."""

    def handler(signum: int, frame: Any) -> None:
        import os
        import sys

        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)

    return handler


def requested() -> bool:
    """Whether SIGTERM arrived in this process."""
    return _requested.is_set()


def check() -> None:
    """Raise `Terminated` if SIGTERM arrived (a safe point of a deferred block)."""
    if _requested.is_set():
        raise Terminated()


def reset() -> None:
    """Forget an earlier SIGTERM (for callers that run several commands in one process, e.g. tests)."""
    _requested.clear()


@contextmanager
def shielded() -> Iterator[None]:
    """While inside, SIGTERM only sets the flag, and leaving does not act on it: for work that runs to its
    end once the outcome is decided (an export's clean-up after its manifest); the caller decides."""
    _defer[0] += 1
    try:
        yield
    finally:
        _defer[0] -= 1


@contextmanager
def deferred() -> Iterator[None]:
    """While inside, SIGTERM only sets the flag; leaving the block checks it."""
    with shielded():
        yield
    check()
