"""scripts/bench_cpu.py's arithmetic over rounds: medians per runner, the share of the ceiling
from per-round pairs, and the table it prints. No runner is started (each is a process and
minutes of a 2-core machine); the rounds are made up with known answers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from bench import peers

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_cpu.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_cpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench_cpu = load_script()
FLOPS = 100e9  # 100 GFLOP a run: 1000 ms is 100 GFLOP/s


def a_round(ceiling: float | None, tvm_ms: float | None, peer_ms: float = 900.0) -> dict:
    return {"ceiling": {"gflops": ceiling, "each": {"numpy": ceiling}} if ceiling else
            {"skipped": "no BLAS"},
            "tvm": {"ms": tvm_ms} if tvm_ms else {"skipped": "failed"},
            "onnxruntime": {"ms": peer_ms}}


def test_runner_times_are_medians_over_the_rounds_and_keep_each_round():
    merged = bench_cpu.median_of_rounds([a_round(200, 1000), a_round(100, 3000),
                                         a_round(150, 2000)])
    assert merged["tvm"] == {"ms": 2000, "rounds": [1000, 3000, 2000]}
    assert merged["ceiling"]["gflops"] == 150
    assert merged["ceiling"]["each"] == {"numpy": 150}


def test_share_of_ceiling_pairs_each_round_not_the_medians():
    # Per round 100 GFLOP/s of 200, 50 of 100, 25 of 150: shares 0.5, 0.5, 0.17.
    rounds = [a_round(200, 1000), a_round(100, 2000), a_round(150, 4000)]
    merged = bench_cpu.median_of_rounds(rounds)
    assert bench_cpu.share_of_ceiling(merged, FLOPS) == pytest.approx(0.5)
    # The ratio of the medians would be 50 GFLOP/s over 150.
    assert FLOPS / merged["tvm"]["ms"] / 1e6 / merged["ceiling"]["gflops"] == pytest.approx(1 / 3)


def test_a_round_missing_either_side_is_left_out_of_the_pairs():
    rounds = [a_round(200, 1000), a_round(None, 500), a_round(100, None)]
    merged = bench_cpu.median_of_rounds(rounds)
    assert merged["tvm"]["rounds"] == [1000, 500, None]
    assert bench_cpu.share_of_ceiling(merged, FLOPS) == pytest.approx(0.5)


def test_a_runner_that_never_ran_keeps_its_reason():
    merged = bench_cpu.median_of_rounds([a_round(200, None), a_round(100, None)])
    assert merged["tvm"] == {"skipped": "failed"}
    assert bench_cpu.share_of_ceiling(merged, FLOPS) is None


def test_table_prints_the_row_ceiling_and_the_paired_share(capsys, monkeypatch):
    monkeypatch.setattr(bench_cpu, "cpu_description", lambda: "test CPU")
    monkeypatch.setattr(bench_cpu, "model_flops", lambda model, batch: FLOPS)
    rounds = [a_round(200, 1000, 1100), a_round(100, 1000, 1300)]
    bench_cpu.print_table([("PE-Core-T16-384", 1, bench_cpu.median_of_rounds(rounds))],
                          ["tvm", "onnxruntime"])
    lines = capsys.readouterr().out.splitlines()
    assert "measured next to each row: 150 GFLOP/s" in lines[0]
    # tvm 1000 ms, ONNX Runtime median 1200 ms; 100 GFLOP/s against 150 (median ceiling), but
    # the share is the median of the pairs 100/200 and 100/100.
    assert lines[3] == ("| PE-Core-T16-384 | 1 | 1000.0 | 1200.0 | 1.20x | 100 | 150 | 75% |")
    assert "rounds tvm (PE-Core-T16-384, batch 1): 1000.0, 1000.0" in lines


def test_mcpu_builds_for_a_narrower_isa_and_refuses_what_cannot_run(monkeypatch):
    from pe_port.build import cpu_target, host_triple
    from pe_port.kernels.isa import vector_isa

    if not host_triple().startswith("x86_64"):
        pytest.skip("the x86 vector ISAs are checked on an x86-64 CPU")
    monkeypatch.delenv(peers.MCPU_VARIABLE, raising=False)
    assert peers.tvm_cpu_target().attrs.get("mcpu") == cpu_target().attrs.get("mcpu")
    monkeypatch.setenv(peers.MCPU_VARIABLE, "x86-64")  # baseline SSE2 runs on any x86-64
    assert vector_isa(peers.tvm_cpu_target()).name == "sse2"
    monkeypatch.setenv(peers.MCPU_VARIABLE, "not-a-cpu")
    with pytest.raises(SystemExit, match="not an LLVM CPU"):
        peers.tvm_cpu_target()
    if vector_isa(cpu_target()).name != "avx512":
        monkeypatch.setenv(peers.MCPU_VARIABLE, "skylake-avx512")
        with pytest.raises(SystemExit, match="cannot run on this"):
            peers.tvm_cpu_target()


def test_the_avx2_build_on_an_avx512_cpu_gets_an_avx2_ceiling(monkeypatch):
    import pe_port.kernels.isa as isa

    monkeypatch.delenv(peers.MCPU_VARIABLE, raising=False)
    if not peers.tvm_cpu_target().attrs["mtriple"].startswith("x86_64"):
        pytest.skip("the x86 vector ISAs are checked on an x86-64 CPU")
    # Pretend this CPU is an AVX-512 one: every target but haswell reads as AVX-512.
    monkeypatch.setattr(isa, "vector_isa", lambda target: isa.AVX2 if target.attrs.get(
        "mcpu") == "haswell" else isa.AVX512)
    assert bench_cpu.ceiling_measurement() == (["ceiling"], {})
    monkeypatch.setenv(peers.MCPU_VARIABLE, "haswell")
    assert bench_cpu.ceiling_measurement() == (
        ["ceiling", "--without-onnxruntime"], peers.AVX2_BLAS_ENV)
    monkeypatch.setenv(peers.MCPU_VARIABLE, "skylake-avx512")
    assert bench_cpu.ceiling_measurement() == (["ceiling"], {})
