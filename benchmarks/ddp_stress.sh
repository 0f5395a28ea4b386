#!/usr/bin/env bash
# Two-rank data-parallel training step (tests/ddp_worker.py under torchrun), repeated beside CPU-bound
# processes: counts the runs that fail. Usage: benchmarks/ddp_stress.sh [RUNS=30] [HOGS=2]
set -u
cd "$(dirname "$0")/.."
runs=${1:-30}; hogs=${2:-2}; python=${PYTHON:-.venv/bin/python}
work=$(mktemp -d); pids=()
for _ in $(seq "$hogs"); do (while :; do :; done) & pids+=($!); done
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT
failed=0
for i in $(seq "$runs"); do
  port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  if ! PYTHONPATH=$PWD OMP_NUM_THREADS=1 timeout 300 "$python" -m torch.distributed.run --nproc_per_node 2 \
      --master_addr 127.0.0.1 --master_port "$port" tests/ddp_worker.py "$work/grads.safetensors" \
      > "$work/log" 2>&1; then
    failed=$((failed + 1)); echo "run $i failed: $(grep -m1 -E 'terminate|Error' "$work/log")"
  fi
done
echo "ddp_stress: $failed of $runs runs failed beside $hogs CPU-bound processes"
