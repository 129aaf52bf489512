"""The perf suite: every runner of the CPU benchmark, through pytest-benchmark.

`make bench` times the official models (PE_BENCH_MODELS); `make test` runs this file once with
timing disabled (`--benchmark-disable`, the default in pyproject) on a tiny vision tower, text
tower and zero-shot run, as a smoke test that every runner works.
Each runner is timed in-process here; `scripts/bench_cpu.py` gives the isolated, tabulated run.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from bench.peers import RUNNERS, SMALL_MODEL, make_runner, split_model

# Unset (as in `make test`): the tiny smoke-test towers only. `make bench` names the real ones.
SMOKE_MODELS = f"{SMALL_MODEL},{SMALL_MODEL}:text,{SMALL_MODEL}:zero-shot"
MODELS = os.environ.get("PE_BENCH_MODELS", SMOKE_MODELS).split(",")
BATCHES = [int(b) for b in os.environ.get("PE_BENCH_BATCHES", "1").split(",")]

NEEDS = {"onnxruntime": ("onnxruntime", "onnx", "onnxscript")}


def missing_package(runner: str) -> str | None:
    for package in NEEDS.get(runner, ()):
        if importlib.util.find_spec(package) is None:
            return package
    return None


# The smoke run of `make test` leaves out the runners that compile or export the peer's way
# (torch.compile, the ONNX export, the traced TVM route: minutes of a 2-core machine each);
# `make test-all` and `make bench` (which names its models) run them.
SMOKE = all(split_model(m)[0] == SMALL_MODEL for m in MODELS)
SLOW_IN_SMOKE = ("compile", "onnxruntime", "tvm-torch-export")
RUNNER_PARAMS = [pytest.param(r, marks=pytest.mark.slow) if SMOKE and r in SLOW_IN_SMOKE else r
                 for r in RUNNERS]


@pytest.mark.parametrize("runner", RUNNER_PARAMS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("model", MODELS)
def test_forward_speed(benchmark, model, batch, runner):
    package = missing_package(runner)
    if package:
        pytest.skip(f"{runner} needs the {package} package")
    traced = runner == "tvm-torch-export"
    if traced and batch > 1 and not SMOKE:
        pytest.skip("the traced route is timed at batch 1 only: its unscheduled kernels take "
                    "minutes per pass")
    run = make_runner(runner, model, batch)
    benchmark.extra_info.update(model=model, batch=batch, runner=runner)
    # One timed pass of the traced route on official models: minutes each.
    rounds = 1 if traced and not SMOKE else 3
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=1)


def test_zero_shot_runners_compute_the_same_probabilities():
    """The bench times the same work in every runner: TVM's zero-shot probabilities (both towers,
    its padding trimmed) equal eager PyTorch's on the tiny towers.

    fp32 with O(1) logits: the towers agree to ~1e-6 relative; 1e-5 absolute on probabilities
    leaves room for the softmax, and a wrong id layout or pooled row moves them by far more.
    """
    labels = 40
    tvm_probs = make_runner("tvm", f"{SMALL_MODEL}:zero-shot", labels)()
    eager_probs = make_runner("eager", f"{SMALL_MODEL}:zero-shot", labels)()
    assert tvm_probs.shape == (1, labels)
    np.testing.assert_allclose(tvm_probs, eager_probs, rtol=0, atol=1e-5)
