#!/usr/bin/env bash
# The whole test suite (README's test command) run back to back beside CPU-bound processes of the same
# niceness, reporting each run's outcome. Usage: benchmarks/loaded_suite.sh [RUNS=3] [HOGS=2]
# UNMIX_CPP_BUILD is passed through (the C++ tests reuse that build when set).
set -u
cd "$(dirname "$0")/.."
runs=${1:-3}; hogs=${2:-2}; python=${PYTHON:-.venv/bin/python}
pids=()
for _ in $(seq "$hogs"); do (while :; do :; done) & pids+=($!); done
trap 'kill "${pids[@]}" 2>/dev/null' EXIT
failed=0
for i in $(seq "$runs"); do
  start=$(date +%s)
  if "$python" -m pytest -q -p no:cacheprovider > "${LOG_PREFIX:-/tmp/loaded_suite}_$i.log" 2>&1; then status=green
  else status=FAILED; failed=$((failed + 1)); fi
  echo "run $i: $status in $(( $(date +%s) - start )) s: $(tail -n 1 "${LOG_PREFIX:-/tmp/loaded_suite}_$i.log")"
done
echo "loaded_suite: $failed of $runs runs failed beside $hogs CPU-bound processes"
exit $(( failed > 0 ))
