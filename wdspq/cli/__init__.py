"""The `wdspq` command line: `wdspq build synthetic|seed|hdf5|sim|lerobot|robomimic`, `validate`, `info`, ...

Layout: `common` (parser class, argument types, the flags several commands share, exit codes, error text)
is imported by every command module; one module per command group (`build` with `build_import`, `shards`
for export/verify with `spec_args`, `show`, `info` for validate/info with `summary` and `mixture`, `demo`);
`app` builds the parser and runs `main`. To add a command, write `def add_X(sub)` that adds one subparser to `sub` with
`set_defaults(func=run_X)` (where `run_X(args) -> int`) and append it to `app.COMMANDS`; `wdspq build`
sources go in `build.BUILD_SOURCES`. Errors from wdspq (and bad-input OSError/ValueError) print one line,
`wdspq: error: ...`, and exit with code 2; `--debug` shows the traceback instead.
"""

from .app import COMMANDS, main, make_parser
from .common import UsageError

__all__ = ["COMMANDS", "UsageError", "main", "make_parser"]
