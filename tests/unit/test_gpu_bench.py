"""scripts/gpu_bench.py end to end on this CPU (`--device cpu`): build, parity, timings, table.

The GPU run itself needs a GPU; this keeps the script's own code paths working meanwhile. It
runs in this process (a second interpreter would import TVM and PyTorch again: a minute of a
busy 2-core machine) and builds one dtype (each build is a compile).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_bench.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # a compile of its own; `make bench-gpu` runs the script for real
def test_gpu_bench_runs_on_the_cpu(tmp_path, capsys):
    gpu_bench = load_script()
    results = tmp_path / "rows.jsonl"
    code = gpu_bench.main(["--device", "cpu", "--models", "tiny", "--dtypes", "float32",
                           "--batches", "1", "--runners", "tvm", "eager", "tensorrt",
                           "--repeats", "1", "--libs", str(tmp_path), "--results", str(results)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "tiny float32 cpu attention: parity" in out and "FAIL" not in out
    assert len([line for line in out.splitlines() if line.startswith("| tiny |")]) == 1
    assert "tensorrt: needs a CUDA GPU" in out
    assert (tmp_path / "manifest.json").is_file()
    # A run split over calls: the table of every row so far, from the results file.
    assert gpu_bench.main(["table", "--results", str(results)]) == 0
    table = capsys.readouterr().out
    assert len([line for line in table.splitlines() if line.startswith("| tiny |")]) == 1
