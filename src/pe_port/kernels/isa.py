"""The vector unit a CPU kernel is shaped for: float32 lanes per register and register count.

The CPU kernels keep their running sums in vector registers (the matmul's output tile, the
attention's score and value tiles). How big such a tile can be is set by the vector unit:

| ISA | examples | lanes (fp32) | registers |
|---|---|---|---|
| AVX-512 | Zen 4/5, Skylake-SP, Ice Lake, Sapphire Rapids | 16 | 32 |
| AVX2 + FMA | Zen 2/3, Haswell to Alder Lake, most laptops | 8 | 16 |
| NEON (AArch64) | Cortex-A76, Neoverse N1, Apple M | 4 | 32 |
| SSE2 (x86-64 baseline) | any x86-64, a CPU LLVM does not know | 4 | 16 |

A tile written for AVX-512 (6 x 64 outputs: 24 registers of 16) needs 48 registers of 8 on
AVX2, which has 16: LLVM spills the accumulators to the stack at every step and the matmul ran
at a third of the machine's ceiling. `vector_isa(target)` reads the ISA off the LLVM target
(its `mcpu` / `mattr` features); the kernels derive their tiles from it. The compile cache is
keyed by the target, which names the CPU, so each ISA gets its own library.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm.target import codegen


@dataclass(frozen=True)
class VectorIsa:
    """A CPU's vector unit as the kernels see it."""

    name: str
    lanes: int  # float32 values per vector register
    registers: int  # architectural vector registers

    @property
    def tile_vectors(self) -> int:
        """Vectors per row of a register tile: 4 with 32 registers, 2 with 16, so that 6 rows
        of accumulators fit (each loaded operand then feeds 6 FMAs)."""
        return 4 if self.registers >= 32 else 2

    @property
    def accumulators(self) -> int:
        """Registers a kernel may fill with running sums: three quarters of them, the rest for
        the operands loaded and broadcast at each step (AVX-512: 24, AVX2: 12, NEON: 24)."""
        return self.registers * 3 // 4


AVX512 = VectorIsa("avx512", lanes=16, registers=32)
AVX2 = VectorIsa("avx2", lanes=8, registers=16)
NEON = VectorIsa("neon", lanes=4, registers=32)
SSE2 = VectorIsa("sse2", lanes=4, registers=16)


# The x86 ISAs from narrowest to widest, each a superset of the ones before it.
X86_BY_WIDTH = (SSE2, AVX2, AVX512)


def runs_on(built: VectorIsa, host: VectorIsa) -> bool:
    """Whether kernels tiled for `built` execute on a CPU whose vector unit is `host`: an x86
    ISA on its own and on every wider one, NEON on NEON."""
    if built in X86_BY_WIDTH and host in X86_BY_WIDTH:
        return X86_BY_WIDTH.index(built) <= X86_BY_WIDTH.index(host)
    return built == host


def vector_isa(target: tvm.target.Target) -> VectorIsa:
    """The vector unit of an LLVM target, from the features its `mcpu` / `mattr` enable."""

    def has(feature: str) -> bool:
        return bool(codegen.target_has_features(feature, target))

    if has("neon"):  # AArch64's Advanced SIMD: LLVM enables it for every AArch64 CPU
        return NEON
    if has("avx512f"):
        return AVX512
    if has("avx2") and has("fma"):
        return AVX2
    return SSE2
