# Two commands for a fresh machine: `make test` and `make demo`. Both create .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-all demo bench bench-gpu lint clean
comma := ,

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch first, pinned: the local CPU build, not the CUDA wheels another spec would pull.
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev]'
	# The tokenizer's BPE vocabulary (read as a file); open_clip's own dependencies are not needed.
	$(PY) -m pip install --no-deps open-clip-torch==3.3.0
	touch $(STAMP)

# Two workers (pytest-xdist): a compile uses one core. Tests that share compiled libraries run
# on one worker (tests/conftest.py, SHARED_WORK). `make test TEST_WORKERS=0` runs serially.
TEST_WORKERS ?= 2
test: $(STAMP) cpp-deps cross-deps
	$(PY) -m pytest -q -n $(TEST_WORKERS) --durations=30

# Also the `slow` tests: official-size towers and the CUDA builds of every dtype and arch.
test-all: $(STAMP) cpp-deps cross-deps
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "slow or not slow"

# Times TVM against PyTorch eager, torch.compile, ONNX Runtime and OpenVINO on the official
# models: the vision towers (batch 1, 8), the PE-Core text towers (batch 1, 64) and zero-shot
# classification of one image over 1,000 labels (S16).
BENCH_MODELS ?= PE-Core-T16-384,PE-Core-S16-384,PE-Core-B16-224,PE-Spatial-B16-512
BENCH_TEXT_MODELS ?= PE-Core-S16-384,PE-Core-B16-224
# S16 only: the peers run B16's text tower over 1,000 x 32 tokens for minutes per pass.
BENCH_ZERO_SHOT_MODELS ?= PE-Core-S16-384
bench: $(STAMP)
	PE_BENCH_MODELS=$(BENCH_MODELS) PE_BENCH_BATCHES=1,8 $(PY) -m pytest tests/perf \
		--benchmark-enable --benchmark-columns=median,min,max --benchmark-sort=name
	$(PY) scripts/bench_cpu.py --models $(subst $(comma), ,$(BENCH_MODELS))
	$(PY) scripts/bench_cpu.py --batches 1 64 --runners tvm eager compile onnxruntime openvino \
		--models $(addsuffix :text,$(subst $(comma), ,$(BENCH_TEXT_MODELS)))
	$(PY) scripts/bench_cpu.py --batches 1000 --repeats 3 --warmup 1 \
		--runners tvm eager compile onnxruntime openvino \
		--models $(addsuffix :zero-shot,$(subst $(comma), ,$(BENCH_ZERO_SHOT_MODELS)))

# On a GPU machine: parity on the GPU, then TVM against PyTorch eager, torch.compile and TensorRT
# (fp16 and bf16, batch 1/8/64). scripts/gpu_bench.py also builds here and runs elsewhere.
bench-gpu: $(STAMP)
	$(PY) scripts/gpu_bench.py

demo: $(STAMP)
	$(PY) scripts/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src reference bench tests scripts cpp/scripts

clean:
	rm -rf $(VENV) build .pytest_cache .hypothesis

# ---- C++ runner (cpp/) --------------------------------------------------------------------------
# `make cpp` builds build/cpp/pe_infer against the TVM runtime and tvm-ffi of the .venv wheels.
CPP_BUILD := build/cpp
# One compile per core: a bare -j starts every file at once, each needing ~1 GB for tvm-ffi's
# templates, and a 2-core machine thrashes.
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
.PHONY: cpp cpp-deps cpp-test cpp-bench fuzz

# The system packages the C++ build needs (cmake, g++, libpng, libjpeg, zlib), installed with
# apt-get when missing; `make test` runs it first since the suite builds cpp/ (tests/cpp).
cpp-deps:
	@sh cpp/scripts/install-deps.sh

cpp: $(STAMP) cpp-deps
	cmake -S cpp -B $(CPP_BUILD) -DPE_PYTHON=$(abspath $(PY)) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(CPP_BUILD) -j $(JOBS)

cpp-test: cpp
	cd $(CPP_BUILD) && ctest --output-on-failure

# Per-image latency of pe_infer against the Python API (docs/perf.md, "C++ runner").
cpp-bench: cpp
	$(PY) cpp/scripts/bench_cpp.py --pe-infer $(CPP_BUILD)/pe_infer

# pe_infer for 64-bit Arm boards (export models with `pe-port export --target aarch64`): built
# with Debian's cross toolchain against the runtime of the aarch64 TVM wheels (fetched by pip into
# build/aarch64), into build/cpp-aarch64; copy pe_infer and the two libraries to the board.
# `make cross-deps` installs the toolchain, the arm64 image libraries and qemu-user (with which
# the test suite runs the result here: tests/cpp/test_aarch64.py).
AARCH64_BUILD := build/cpp-aarch64
.PHONY: cross-deps cpp-aarch64
cross-deps:
	@sh cpp/scripts/install-cross-deps.sh

cpp-aarch64: $(STAMP) cross-deps
	$(PY) cpp/scripts/fetch_aarch64_runtime.py build/aarch64
	cmake -S cpp -B $(AARCH64_BUILD) -DCMAKE_TOOLCHAIN_FILE=$(abspath cpp/cmake/aarch64-linux-gnu.cmake) \
		-DPE_TVM_PACKAGES=$(abspath build/aarch64/packages) -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF
	cmake --build $(AARCH64_BUILD) -j $(JOBS) --target pe_infer

# The fuzz tests at FUZZ_CASES inputs per format (`make test` runs 150): the Python readers, and
# pe_infer's readers built with AddressSanitizer + UndefinedBehaviorSanitizer, where any report
# aborts the harness and fails the test (tests/cpp/test_fuzz_cpp.py).
FUZZ_BUILD := build/fuzz
FUZZ_CASES ?= 3000
fuzz: $(STAMP) cpp-deps
	cmake -S cpp -B $(FUZZ_BUILD) -DPE_PYTHON=$(abspath $(PY)) -DCMAKE_BUILD_TYPE=RelWithDebInfo \
		-DPE_SANITIZE=ON
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target pe_fuzz_inputs
	ASAN_OPTIONS=detect_leaks=0 PE_CPP_BUILD=$(abspath $(FUZZ_BUILD)) PE_FUZZ_CASES=$(FUZZ_CASES) \
		$(PY) -m pytest -q -n 0 tests/cpp/test_fuzz_cpp.py tests/unit/test_fuzz_inputs.py
