#!/usr/bin/env bash
# Issue 4's GPU check as one command, for a machine with an NVIDIA GPU whose python3 already has numba,
# numba-cuda, numpy, msgpack, torch, pytest and hypothesis (nothing is installed: such machines are often
# offline). Run from the repository root:
#
#     bash bench/gpu_device.sh [RESULTS_DIR]      # default: $OUT if set, else ./gpu-results
#     GPU_SIM=1 bash bench/gpu_device.sh /tmp/r   # the same steps under numba's CUDA simulator (no GPU)
#
# Writes into RESULTS_DIR: env.txt (GPU, driver, versions), tests.log (pytest tests/cuda on the device),
# gpu.log (python bench/gpu.py: the device correctness check, then the timings; its table is printed last).
# Exits non-zero if the tests or the benchmark failed. Each step has a time limit, so that the whole run
# stays inside ~9 minutes; pass BENCH_ARGS to narrow the benchmark (e.g. BENCH_ARGS="--hidden 64 256").
set -uo pipefail
out="${1:-${OUT:-gpu-results}}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
sim=()
tests_limit=240  # seconds; 50 s on an H200
if [[ -n "${GPU_SIM:-}" ]]; then
    export NUMBA_ENABLE_CUDASIM=1
    sim=(--sim)
    tests_limit=900  # the simulator interprets every thread: ~4 minutes on 2 cores
fi

{
    date -u
    nvidia-smi 2>&1 || echo "(no nvidia-smi)"
    "$py" - <<'EOF'
import platform
import numba, numpy, torch
print("python", platform.python_version(), "numba", numba.__version__, "numpy", numpy.__version__,
      "torch", torch.__version__, "torch.cuda", torch.cuda.is_available())
try:
    import importlib.metadata as md
    print("numba-cuda", md.version("numba-cuda"))
except Exception as e:
    print("numba-cuda: not found", e)
from numba import cuda
print("numba.cuda available:", cuda.is_available())
if cuda.is_available():
    cuda.detect()
EOF
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

timeout "$tests_limit" "$py" -m pytest -q -p no:cacheprovider tests/cuda 2>&1 | tee "$out/tests.log"
tests=${PIPESTATUS[0]}
# shellcheck disable=SC2086  # BENCH_ARGS is a list of options
timeout 300 "$py" bench/gpu.py "${sim[@]}" ${BENCH_ARGS:-} 2>&1 | tee "$out/gpu.log"
bench=${PIPESTATUS[0]}
echo "tests/cuda exit status: $tests; bench/gpu.py exit status: $bench" | tee -a "$out/gpu.log"
[[ $tests -eq 0 && $bench -eq 0 ]]
