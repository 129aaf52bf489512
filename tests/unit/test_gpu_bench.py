"""scripts/gpu_bench.py end to end on this CPU (`--device cpu`): build, parity, timings, table.

The GPU run itself awaits a GPU; this keeps the script's own code paths working meanwhile.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_bench.py"


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=1800)  # a guard only: 2 busy cores need minutes


def test_gpu_bench_runs_on_the_cpu(tmp_path):
    results = tmp_path / "rows.jsonl"
    result = bench("--device", "cpu", "--models", "tiny", "--dtypes", "float32", "float16",
                   "--batches", "1", "--runners", "tvm", "eager", "tensorrt", "--repeats", "1",
                   "--libs", str(tmp_path), "--results", str(results))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "tiny float32 cpu attention: parity" in result.stdout and "FAIL" not in result.stdout
    table = [line for line in lines if line.startswith("| tiny |")]
    assert len(table) == 2  # one row per dtype at batch 1
    assert "tensorrt: needs a CUDA GPU" in result.stdout
    assert (tmp_path / "manifest.json").is_file()
    # A run split over calls: the table of every row so far, from the results file.
    table = bench("table", "--results", str(results))
    assert table.returncode == 0, table.stderr
    assert len([line for line in table.stdout.splitlines() if line.startswith("| tiny |")]) == 2
