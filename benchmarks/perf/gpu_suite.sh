#!/usr/bin/env bash
# The GPU half of the performance suite, for a machine with a CUDA GPU: the GPU tests, then the three perf
# scripts' GPU sections (--gpu-only: the CPU figures come from CPU runs). Usage:
#   bash benchmarks/perf/gpu_suite.sh [OUT_DIR] [PYTHON]     # default: benchmarks/results, .venv/bin/python
# Writes OUT_DIR/perf_{training_cost,attack_throughput,scaling}_gpu.json and a log per step; a step that fails
# or runs past its time limit is reported and the next one still runs.
set -u
out=${1:-benchmarks/results}
py=${2:-.venv/bin/python}
mkdir -p "$out"
# BENCH_SHARED=1 if other jobs share the machine; BENCH_GIT_COMMIT=SHA if the tree here has no (or a stale) .git.
export ROBUSTKIT_PROGRESS=0 PYTHONUNBUFFERED=1 BENCH_SHARED=${BENCH_SHARED:-0}
status=0
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    tail -n 60 "$out/$name.log"
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    [ $rc -eq 0 ] || status=1
}
step gpu_tests 150 "$py" -m pytest -q -p no:cacheprovider tests/test_gpu.py \
    tests/test_art_adapter.py::test_runs_on_the_model_device_and_returns_on_the_input_device \
    tests/test_torchattacks_adapter.py::test_runs_on_the_model_device_and_returns_on_the_input_device
step training_cost 330 "$py" benchmarks/perf/training_cost.py --gpu-only --gpu-settings paper-like,wrn-32-10 --out "$out/perf_training_cost_gpu.json"
step attack_throughput 200 "$py" benchmarks/perf/attack_throughput.py --gpu-only --out "$out/perf_attack_throughput_gpu.json"
step scaling 200 "$py" benchmarks/perf/scaling.py --gpu-only --out "$out/perf_scaling_gpu.json"
exit $status
