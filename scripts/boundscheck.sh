#!/usr/bin/env bash
# Bounds-checked run of the compiled kernels (`.ci/run` calls it after the test suite).
#
# With NUMBA_BOUNDSCHECK=1 every array index in a kernel is checked, so a read or write past an
# array raises IndexError instead of returning garbage or crashing only after some histories. It
# runs on an empty numba cache, which each step below fills in its own process, as a new clone's
# first commands do:
#   1. `xmc train`, `xmc evaluate` and the main job, one process each: the sequence whose cache
#      entries once linked one kernel to another's helper and segfaulted the main job;
#   2. on a second empty cache, the kernel property tests, the XR-Linear, tree and TF-IDF tests,
#      and the CLI tests.
# The main job runs in a copy of the packages (as tests/test_crash.py does), so the checkout's
# data/ is not touched.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
PY="$repo/.venv/bin/python"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export NUMBA_BOUNDSCHECK=1

data="$repo/../shared/data"
reuters="$data/reuters-21578"
if [ ! -d "$reuters" ]; then
  if [ -n "${CI:-}" ] && [ "$CI" != "false" ] && [ "$CI" != "0" ]; then
    echo "boundscheck: $reuters is missing" >&2
    exit 1
  fi
  echo "boundscheck: $reuters is missing; the train/evaluate/main job sequence is skipped" >&2
else
  data=$(cd "$data" && pwd)
  echo "boundscheck: xmc train, xmc evaluate, main job (one process each, one empty numba cache)"
  export NUMBA_CACHE_DIR="$tmp/numba-cache-cli"
  # numba names a cache folder after the source's path: every step imports the copy's packages
  mkdir -p "$tmp/repo" "$tmp/dagster_home"
  cp -r xmc_core xmc_assets "$tmp/repo/"
  printf 'telemetry:\n  enabled: false\n' >"$tmp/dagster_home/dagster.yaml"
  export PYTHONPATH="$tmp/repo"
  "$repo/.venv/bin/xmc" train --data "$reuters" --model "$tmp/model" >"$tmp/train.log" 2>&1 \
    || { echo "boundscheck: xmc train failed:"; tail -20 "$tmp/train.log"; exit 1; }
  "$repo/.venv/bin/xmc" evaluate --model "$tmp/model" --data "$reuters" >"$tmp/evaluate.log" 2>&1 \
    || { echo "boundscheck: xmc evaluate failed:"; tail -20 "$tmp/evaluate.log"; exit 1; }
  rc=0
  (cd "$tmp/repo" && env -u XMC_DATA_ROOT DAGSTER_HOME="$tmp/dagster_home" \
    "$PY" -m xmc_assets.main --data-root "$data" >"$tmp/main.log" 2>&1) || rc=$?
  if [ "$rc" != 0 ]; then
    echo "boundscheck: the main job failed (exit $rc):"
    grep -E "Error|error|Segmentation" "$tmp/main.log" | tail -5
    exit 1
  fi
  unset PYTHONPATH
  grep -m1 "^label sets" "$tmp/main.log" || true
fi

echo "boundscheck: tests (another empty numba cache)"
export NUMBA_CACHE_DIR="$tmp/numba-cache-tests"
"$PY" -m pytest -q -p no:cacheprovider tests/test_kernel_properties.py tests/test_xlinear.py tests/test_tree.py \
  tests/test_tfidf.py tests/test_cli.py tests/test_cli_ux.py
echo "boundscheck: passed"
