"""Hand-written kernels, kept apart from the model so each can be read and tested alone.

- `rope`: 2D rotary position embedding fused with the q|k|v split (TIR).
- `posemb`: bilinear resize of the position-embedding grid (TE).
- `cpu`: the CPU fast path (TIR): packed-weight matmuls with fused epilogues, fused attention,
  layer norm, the patch gather.
- `cpu_schedule`: the pass that schedules, on the CPU, the kernels TVM legalizes.
- `gpu`: the GPU fast path (TIR): flash attention with an online softmax, fp32 accumulation,
  written so that it also runs, serially, on the CPU for the parity suite.
- `gpu_schedule`: the pass that schedules, on the GPU, the kernels TVM legalizes (dlight), with
  bf16 tensor-core matmuls.
- `patches`: the patch gather that turns the patch embedding into a matmul (any target).
"""

from pe_port.kernels.posemb import resize_posemb
from pe_port.kernels.rope import make_rope_qkv_kernel, rope_qkv, rope_rotated_dim

__all__ = ["make_rope_qkv_kernel", "resize_posemb", "rope_qkv", "rope_rotated_dim"]
