"""scripts/gpu_bench.py: its build-side pieces (cheap, no compile), and end to end on this CPU
(`--device cpu`): build, parity, timings, table.

The GPU run itself needs a GPU; this keeps the script's own code paths working meanwhile. It
runs in this process (a second interpreter would import TVM and PyTorch again: a minute of a
busy 2-core machine) and builds one dtype (each build is a compile).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_bench.py"
# A tiny text tower as the manifest records one (no library: only the PyTorch runners use it).
TINY_TEXT = {"context_length": 32, "width": 32, "heads": 2, "layers": 2, "output_dim": 16,
             "mlp_ratio": 4.0, "vocab_size": 512}


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # where its dataclass looks up its own module
    spec.loader.exec_module(module)
    return module


gpu_bench = load_script()


def test_vision_libraries_keep_their_names_and_text_ones_say_text():
    # Earlier runs' libraries (docs/results) stay loadable under the names they were built with.
    assert gpu_bench.library_name("PE-Core-B16-224", "vision", "float16", "flash") == \
        "PE-Core-B16-224-float16-flash.so"
    assert gpu_bench.library_name("PE-Core-B16-224", "text", "float16", "flash") == \
        "PE-Core-B16-224-text-float16-flash.so"


def test_manifest_entries_from_before_the_text_tower_read_as_vision_towers():
    old = {"model": "PE-Core-B16-224", "dtype": "float16", "flops_per_image": 7}
    assert gpu_bench.tower_of(old) == "vision"
    assert gpu_bench.flops_per_input(old) == 7


def test_only_pe_core_models_have_a_text_tower_to_build():
    assert gpu_bench.has_text_tower("PE-Core-B16-224")
    assert gpu_bench.has_text_tower("PE-Core-L14-336")
    assert not gpu_bench.has_text_tower("PE-Spatial-B16-512")


def test_text_tower_manifest_fields_are_its_config_and_flops_per_full_context_text():
    from pe_port.config import text_config
    from pe_port.params import text_forward_flops

    config = text_config("PE-Core-B16-224")
    fields = gpu_bench.text_manifest_fields(config)
    assert fields["config"] == config.as_kwargs()
    assert fields["context_length"] == 32
    assert fields["flops_per_input"] == text_forward_flops(config, 1, 32)


def test_libraries_with_the_same_cuda_source_need_one_cubin(tmp_path, monkeypatch):
    """B16's and L14's text towers are one config: one nvcc run serves both libraries."""
    sources = gpu_bench.cuda_source_dir(tmp_path)
    sources.mkdir()
    towers = []
    for model in ("B", "L"):
        (sources / f"{model}.0.cu").write_text("same kernels")
        towers.append({"cubins": [{"file": f"{model}.0.cubin", "sha256": "same"}]})
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"target": json.dumps({"arch": "sm_90"}), "towers": towers}))
    compiled = []
    monkeypatch.setattr(gpu_bench, "nvcc_cubin",
                        lambda source, cubin, arch: compiled.append(cubin.name)
                        or cubin.write_bytes(b"cubin"))
    gpu_bench.precompile_cubins(tmp_path)
    assert compiled == ["B.0.cubin"]
    assert gpu_bench.cubins_by_source(towers, tmp_path) == {
        "same": [tmp_path / "B.0.cubin", tmp_path / "L.0.cubin"]}


def test_texts_fill_the_context_start_to_end_and_pool_at_the_last_token():
    import torch

    ids = gpu_bench.random_text_ids(torch, TINY_TEXT, 16, torch.Generator().manual_seed(0))
    vocab = TINY_TEXT["vocab_size"]
    assert ids.shape == (16, 32)
    assert (ids[:, 0] == vocab - 2).all() and (ids[:, -1] == vocab - 1).all()
    words = ids[:, 1:-1]
    assert words.min() >= 1 and words.max() < vocab - 2
    assert (ids.argmax(dim=1) == 31).all()  # the tower pools at the end id


def test_peers_time_a_text_tower_without_any_library(tmp_path, capsys):
    """`run` with PyTorch's runners only: the text tower's reference, ids and table row."""
    (tmp_path / "manifest.json").write_text(json.dumps({"device": "cpu", "target": "{}", "towers": [
        {"model": "tiny", "tower": "text", "dtype": "float32", "attention": "cpu",
         "library": "none.so", "params": [], "cubins": [], "config": TINY_TEXT,
         "context_length": 32, "flops_per_input": 1}]}))
    code = gpu_bench.main(["run", "--device", "cpu", "--models", "tiny", "--towers", "text",
                           "--dtypes", "float32", "--batches", "2", "--runners", "eager",
                           "--repeats", "1", "--libs", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = [line for line in out.splitlines() if line.startswith("| tiny:text | float32 |")]
    assert len(rows) == 1 and "| 2 |" in rows[0], out


@pytest.mark.slow  # a compile of its own; `make bench-gpu` runs the script for real
def test_gpu_bench_runs_on_the_cpu(tmp_path, capsys):
    results = tmp_path / "rows.jsonl"
    code = gpu_bench.main(["--device", "cpu", "--models", "tiny", "--dtypes", "float32",
                           "--batches", "1", "--runners", "tvm", "eager", "tensorrt",
                           "--repeats", "1", "--libs", str(tmp_path), "--results", str(results)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "tiny float32 cpu attention: parity" in out and "FAIL" not in out
    assert "tiny:text float32 cpu attention: parity" in out
    assert len([line for line in out.splitlines() if line.startswith("| tiny |")]) == 1
    assert len([line for line in out.splitlines() if line.startswith("| tiny:text |")]) == 1
    assert "tensorrt: needs a CUDA GPU" in out
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert {t["tower"] for t in manifest["towers"]} == {"vision", "text"}
    # A run split over calls: the table of every row so far, from the results file.
    assert gpu_bench.main(["table", "--results", str(results)]) == 0
    table = capsys.readouterr().out
    assert len([line for line in table.splitlines() if line.startswith("| tiny")]) == 2
