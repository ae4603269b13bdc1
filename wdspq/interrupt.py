"""SIGTERM as an orderly stop: a flag that is always set, and an exception raised where it is safe.

The CLI installs `on_sigterm`. Normally it raises `Terminated` at once (builders clean up in their
`finally`). Inside `deferred()` (the export while a process or thread pool runs) it only sets the flag:
an exception raised at a random point of the pool's own code can corrupt its state (a hang) or land in
a finalizer (swallowed, the export then "succeeds"); the export calls `check()` at safe points instead.
`requested()` lets the CLI exit non-zero even if an exception was swallowed somewhere.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_requested = threading.Event()
_defer = [0]


class Terminated(BaseException):
    """SIGTERM, turned into an exception so commands clean up their temporary files."""


def on_sigterm(signum: int, frame: Any) -> None:
    """The SIGTERM handler: set the flag; raise unless a `deferred()` block is running."""
    _requested.set()
    if not _defer[0]:
        raise Terminated()


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
def deferred() -> Iterator[None]:
    """While inside, SIGTERM only sets the flag; leaving the block checks it."""
    _defer[0] += 1
    try:
        yield
    finally:
        _defer[0] -= 1
    check()
