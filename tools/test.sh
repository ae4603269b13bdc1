#!/usr/bin/env bash
# Install what the tests need (tools/setup.sh), lint, and run the whole test suite, slow tier included.
# Extra arguments go to pytest (e.g. `bash tools/test.sh -m "not slow"` for the fast tier only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
.venv/bin/ruff check wdspq tests tools
if [ "$#" -eq 0 ]; then
  set -- -m "slow or not slow"
fi
exec .venv/bin/python -m pytest "$@"
