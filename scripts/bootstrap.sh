#!/usr/bin/env bash
# Idempotent set-up: a project virtual environment in .venv with xmc (editable) and test tools.
# The "transformer" extra (XR-Transformer, XLGen) pins torch==2.13.0 (a plain "torch"
# pulls GBs of CUDA wheels on these machines). The "ray" extra is the Ray engine (--engine ray).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.xmc-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -e '.[dev,transformer,ray]'
  touch "$stamp"
fi
