#!/usr/bin/env sh
# The command for a lent GPU machine without TVM's compiler (docs/perf.md, "GPU"): installs the
# carried cp312 wheels, then `gpu_bench.py run` from build/device (the copy made with the
# libraries) with TVM's runtime only. Rows and the log go to $OUT; extra arguments go to `run`.
#   carry: build/gpu_bench build/gpu_bench_cuda_src build/device
set -eu
OUT=${OUT:-build/device_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site build/device/wheels/*.whl
export TVM_USE_RUNTIME_LIB=1 PYTHONPATH=/tmp/site:build/device
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$OUT/gpu.csv" || true
# The CUDA kernels to cubins with nvcc, all libraries at once (16 cores there, 2 here).
python3 build/device/bench/scripts/gpu_bench.py cubins --libs build/gpu_bench 2>&1 | tee "$OUT/cubins.txt"
python3 build/device/bench/scripts/gpu_bench.py run --libs build/gpu_bench \
    --results "$OUT/rows.jsonl" "$@" 2>&1 | tee "$OUT/log.txt"
