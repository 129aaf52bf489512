"""scripts/gpu_bench.py end to end on this CPU (`--device cpu`): build, parity, timings, table.

The GPU run itself awaits a GPU; this keeps the script's own code paths working meanwhile.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_bench.py"


def test_gpu_bench_runs_on_the_cpu(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--models", "tiny", "--dtypes",
         "float32", "float16", "--batches", "1", "--runners", "tvm", "eager", "tensorrt",
         "--repeats", "1", "--libs", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "tiny float32 cpu attention: parity" in result.stdout and "FAIL" not in result.stdout
    table = [line for line in lines if line.startswith("| tiny |")]
    assert len(table) == 2  # one row per dtype at batch 1
    assert "tensorrt: needs a CUDA GPU" in result.stdout
    assert (tmp_path / "manifest.json").is_file()
