"""The CPU kernels' tiles follow the target's vector unit: the ISA read off the LLVM target, and
tiles that fit its registers and divide every official width; the named aarch64 target."""

from __future__ import annotations

import math
import platform

import pytest
import tvm

from pe_port.backends import CpuBackend, for_target
from pe_port.build import export_options, resolve_target
from pe_port.config import MODEL_NAMES, PE_TEXT_CONFIG, get_config
from pe_port.errors import TargetError
from pe_port.kernels.attention import attention_tile, key_chunk
from pe_port.kernels.dense import dense_tile
from pe_port.kernels.isa import AVX2, AVX512, NEON, SSE2, runs_on, vector_isa

ISAS = (AVX512, AVX2, NEON, SSE2)


@pytest.mark.parametrize("triple, mcpu, isa", [
    ("x86_64-linux-gnu", "znver3", AVX2),
    ("x86_64-linux-gnu", "haswell", AVX2),
    ("x86_64-linux-gnu", "znver4", AVX512),
    ("x86_64-linux-gnu", "skylake-avx512", AVX512),
    ("x86_64-linux-gnu", "x86-64", SSE2),
    ("aarch64-linux-gnu", "cortex-a76", NEON),
    ("aarch64-linux-gnu", "neoverse-n1", NEON),
    ("aarch64-linux-gnu", "cortex-a72", NEON),  # Armv8.0: the README's Raspberry Pi 4 target
])
def test_isa_is_read_off_the_target(triple, mcpu, isa):
    assert vector_isa(tvm.target.Target({"kind": "llvm", "mtriple": triple, "mcpu": mcpu})) == isa


def official_shapes() -> tuple[set[int], set[int]]:
    """Every matmul output width and every head size of the official towers."""
    widths, head_dims = set(), set()
    for config in [get_config(name) for name in MODEL_NAMES] + list(PE_TEXT_CONFIG.values()):
        mlp = int(config.width * config.mlp_ratio)
        widths |= {config.width, 3 * config.width, mlp, config.output_dim or config.width}
        head_dims.add(config.width // config.heads)
    return widths, head_dims


@pytest.mark.parametrize("isa", ISAS, ids=lambda isa: isa.name)
def test_dense_tile_fits_the_registers_and_divides_every_width(isa):
    widths, _ = official_shapes()
    for n in widths:
        rows, cols = dense_tile(n, isa)
        assert n % cols == 0, (n, cols)
        assert rows * math.ceil(cols / isa.lanes) <= isa.accumulators, (n, rows, cols)


@pytest.mark.parametrize("isa", ISAS, ids=lambda isa: isa.name)
def test_attention_tile_fits_the_registers_and_divides_every_head(isa):
    _, head_dims = official_shapes()
    for head_dim in head_dims:
        rows, dcols = attention_tile(head_dim, isa)
        assert head_dim % dcols == 0
        assert rows * key_chunk(isa) // isa.lanes <= isa.accumulators  # the scores tile
        assert rows * math.ceil(dcols / isa.lanes) <= isa.accumulators  # the output tile
        assert rows == 6  # each loaded key or value vector feeds 6 FMAs


def test_an_x86_build_runs_on_its_own_isa_and_wider_ones_only():
    assert runs_on(SSE2, AVX2) and runs_on(AVX2, AVX512) and runs_on(AVX2, AVX2)
    assert not runs_on(AVX512, AVX2) and not runs_on(AVX2, SSE2)
    assert runs_on(NEON, NEON) and not runs_on(NEON, AVX512) and not runs_on(SSE2, NEON)


def test_avx512_tiles_are_the_ones_the_avx512_table_was_measured_with():
    """docs/perf.md's AVX-512 table predates the ISA rule; the rule gives its tiles back."""
    assert dense_tile(768, AVX512) == (6, 64) and dense_tile(192, AVX512) == (6, 64)
    assert attention_tile(64, AVX512) == (6, 64) and key_chunk(AVX512) == 64


def test_avx2_tiles_use_twelve_of_its_sixteen_registers():
    assert dense_tile(768, AVX2) == (6, 16)
    assert attention_tile(64, AVX2) == (6, 16) and key_chunk(AVX2) == 16


def test_neon_tiles_use_twenty_four_of_its_thirty_two_registers():
    """4 lanes, 32 registers: 6 x 16 (24 accumulators), 4 weight vectors and the inputs fit."""
    assert dense_tile(768, NEON) == (6, 16) and dense_tile(192, NEON) == (6, 16)
    assert attention_tile(64, NEON) == (6, 16) and key_chunk(NEON) == 16
    rows, cols = dense_tile(768, NEON)
    assert rows * cols // NEON.lanes + cols // NEON.lanes + 1 <= NEON.registers


def test_target_aarch64_is_a_neon_cpu_target():
    target = resolve_target("aarch64")
    assert target.attrs["mtriple"] == "aarch64-linux-gnu" and target.kind.name == "llvm"
    backend = for_target(target)
    assert isinstance(backend, CpuBackend) and backend.isa == NEON


def test_an_unknown_target_names_the_known_ones():
    with pytest.raises(TargetError, match="unknown target 'arm'.*'aarch64'"):
        resolve_target("arm")


@pytest.mark.skipif(platform.machine() == "aarch64", reason="aarch64 links natively here")
def test_a_missing_cross_linker_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(TargetError, match="aarch64-linux-gnu-g\\+\\+, which is not on the PATH"):
        export_options(resolve_target("aarch64"))
