#!/usr/bin/env sh
# What a GPU machine without TVM's compiler needs to run `gpu_bench.py run`, in build/device/:
# TVM's runtime only (the installed package without libtvm_compiler.so and the sources, which
# `TVM_USE_RUNTIME_LIB=1` then loads alone), the cp312 wheels of tvm-ffi and ml_dtypes, and a
# copy of gpu_bench.py with the PyTorch reference (bench/), so that the run there uses the code
# the libraries were built with even while the checkout moves on.
# Use (docs/perf.md, "GPU"): build the libraries with `gpu_bench.py build` into build/gpu_bench,
# carry build/gpu_bench and build/device to the GPU machine, then there:
#   pip install --no-index --no-deps --target /tmp/site build/device/wheels/*.whl
#   TVM_USE_RUNTIME_LIB=1 PYTHONPATH=/tmp/site:build/device \
#       python build/device/bench/scripts/gpu_bench.py run --libs build/gpu_bench
set -eu
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT_DIR:-build/device}
TVM_DIR=$($PY -c "import os, tvm; print(os.path.dirname(tvm.__file__))")
rm -rf "$OUT"
mkdir -p "$OUT/wheels" "$OUT/bench/scripts"
cp -r "$TVM_DIR" "$OUT/tvm"
rm -rf "$OUT/tvm/lib/libtvm_compiler.so" "$OUT/tvm/3rdparty" "$OUT/tvm/src" "$OUT/tvm/include"
find "$OUT/tvm" -name __pycache__ -prune -exec rm -rf {} +
cp scripts/gpu_bench.py "$OUT/bench/scripts/"
cp -r reference "$OUT/bench/reference"
find "$OUT/bench" -name __pycache__ -prune -exec rm -rf {} +
FFI_VERSION=$($PY -c "import importlib.metadata as m; print(m.version('apache-tvm-ffi'))")
$PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 -d "$OUT/wheels" "apache-tvm-ffi==$FFI_VERSION" ml_dtypes
du -sh "$OUT"
