"""Hand-written kernels, kept apart from the model so each can be read and tested alone.

- `rope`: 2D rotary position embedding fused with the q|k|v split (TIR).
- `posemb`: bilinear resize of the position-embedding grid (TE).
- `cpu`: the CPU fast path: packed-weight matmuls with fused epilogues and fused attention (TIR).
"""

from pe_port.kernels.posemb import resize_posemb
from pe_port.kernels.rope import make_rope_qkv_kernel, rope_qkv, rope_rotated_dim

__all__ = ["make_rope_qkv_kernel", "resize_posemb", "rope_qkv", "rope_rotated_dim"]
