#!/usr/bin/env sh
# The command for a lent GPU machine without TVM's compiler (docs/perf.md, "GPU"): installs the
# carried cp312 wheels (once per machine), compiles the CUDA kernels of the libraries in $LIBS to
# cubins where the build machine left none, then `gpu_bench.py run` from build/device (the copy
# made with the libraries) with TVM's runtime only. Rows go to $OUT/$RESULTS.jsonl, the log to
# $OUT/log.txt (appended: several calls of this script make one log); extra arguments go to `run`.
#   carry: $LIBS (default build/gpu_bench), its `_cuda_src` folder unless cubins were made here,
#   and $DEVICE (default build/device, what scripts/device_bundle.sh made)
set -eu
OUT=${OUT:-build/device_out}
LIBS=${LIBS:-build/gpu_bench}
RESULTS=${RESULTS:-rows}
DEVICE=${DEVICE:-build/device}
BENCH=$DEVICE/bench/scripts/gpu_bench.py
mkdir -p "$OUT"
[ -d /tmp/site/tvm_ffi ] ||
    python3 -m pip install -q --no-index --no-deps --target /tmp/site "$DEVICE"/wheels/*.whl
export TVM_USE_RUNTIME_LIB=1 PYTHONPATH=/tmp/site:$DEVICE PYTHONUNBUFFERED=1
[ -f "$OUT/gpu.csv" ] ||
    nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$OUT/gpu.csv" || true
# The CUDA kernels to cubins with nvcc, all libraries at once (16 cores there, 2 here).
python3 "$BENCH" cubins --libs "$LIBS" >> "$OUT/cubins.txt" 2>&1 || echo "cubins failed: $OUT/cubins.txt"
grep "cubin: nvcc" "$OUT/cubins.txt" || true
python3 "$BENCH" run --libs "$LIBS" --results "$OUT/$RESULTS.jsonl" "$@" 2>&1 | tee -a "$OUT/log.txt"
