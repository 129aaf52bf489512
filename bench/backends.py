"""Backend variants for the tests and benchmarks only: production code never builds these.

- `EmulatedGpuBackend`: the GPU graph with its hand-written kernels in their serial form, so
  the parity suite runs the GPU graph on a CPU.
- `UnfusedAttentionGpuBackend`: the GPU graph with attention as two matmuls around a float32
  softmax instead of the flash kernel; which is faster depends on the sequence length and the
  GPU, so `scripts/gpu_bench.py --attention` times both.
"""

from __future__ import annotations

from pe_port.backends import Backend, GpuBackend


class EmulatedGpuBackend(GpuBackend):
    name = "gpu_emulated"

    def __init__(self) -> None:
        super().__init__(emulate=True)


class UnfusedAttentionGpuBackend(GpuBackend):
    name = "gpu_unfused"

    def attention(self, q, k, v, scale, causal=False):
        return Backend.attention(self, q, k, v, scale, causal)


# By name, for parametrised tests and command-line flags.
VARIANTS: dict[str, Backend] = {
    "generic": Backend(),
    "gpu_emulated": EmulatedGpuBackend(),
    "gpu_unfused": UnfusedAttentionGpuBackend(),
}
