"""2D RoPE for PE: split the fused q|k|v projection into heads and rotate q and k in one pass.

The angles are computed from each token's grid position inside the kernel, so it serves any
(symbolic) batch and grid with no table passed at run time.
"""

from __future__ import annotations

import functools

from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op
from tvm.script import tirx as T

from pe_port.kernels.tvmscript import quick_frame_inspection

ROPE_THETA = 10000.0


@functools.cache  # one parse per head shape and dtype
@quick_frame_inspection()
def make_rope_qkv_kernel(heads: int, head_dim: int, use_cls_token: bool, dtype: str):
    """Build the TIR kernel `qkv [b, s, 3 * heads * head_dim] -> q, k, v [b, s, heads, head_dim]`.

    Why a kernel: the original builds a table of angles per grid on the host and multiplies it in;
    here the kernel derives each token's (row, column) from `(s, grid_w)` and computes the cos
    and sin it needs itself (a small table per call, one entry per position value and
    frequency), so one compiled function serves every grid size and no table travels at run
    time. Splitting the fused projection in the same pass saves two copies of the activations.

    Layout of one head's features (`n = head_dim // 4` frequencies per axis, `P = 2 n`):
    `[0, P)` rotate with the token's column x, `[P, 2P)` with its row y, `[2P, head_dim)` pass
    unchanged. Feature `d` of an axis uses frequency `i = (d % P) // 2` (each angle serves an
    adjacent pair), `inv_freq(i) = 10000 ** -(2 i / (head_dim // 2))`. With a cls token the grid
    positions start at 1 and token 0 is not rotated. Angles are computed in float32 whatever the
    activation dtype, as the original does.
    """
    width = heads * head_dim
    axis_dim = head_dim // 2
    freqs = max(1, axis_dim // 2)
    pair_span = 2 * (axis_dim // 2)
    rotated = 2 * pair_span
    first_patch = 1 if use_cls_token else 0

    def position(s, d, grid_w):
        """The position value feature `d` of token `s` rotates by: column for the first axis
        features, row for the second, shifted by one with a cls token; 0 for the cls token."""
        patch = s - first_patch
        col = patch % grid_w + first_patch
        row = patch // grid_w + first_patch
        return T.Select(s < first_patch, T.int64(0), T.Select(d < pair_span, col, row))

    def position_values(seq, grid_w):
        """How many position values the grid uses: 0 (cls) up to the longer side."""
        return T.max(grid_w, (seq - first_patch) // grid_w) + first_patch

    def angle(pos, freq):
        """`pos * 10000 ** -(2 freq / axis_dim)` in float32, as the original computes it."""
        exponent = T.Cast("float32", 2 * freq) / T.float32(axis_dim)
        return T.Cast("float32", pos) * (T.float32(1.0) / T.pow(T.float32(ROPE_THETA), exponent))

    def rotate(qkv, cos_table, sin_table, b, s, base, d, grid_w):
        """Feature `d` of the head starting at `base`, rotated: partner of a pair is d ^ 1."""
        pos = position(s, d, grid_w)
        freq = (d % pair_span) // 2
        value = T.Cast("float32", qkv[b, s, base + d])
        partner = T.Cast("float32", qkv[b, s, base + T.Select(d % 2 == 0, d + 1, d - 1)])
        signed_partner = T.Select(d % 2 == 0, -partner, partner)
        return T.Cast(dtype, value * cos_table[pos, freq] + signed_partner * sin_table[pos, freq])

    @T.prim_func(private=True, s_tir=True)
    def rope_qkv(
        var_qkv: T.handle,
        grid_w: T.int64,
        var_q: T.handle,
        var_k: T.handle,
        var_v: T.handle,
    ):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True})
        batch = T.int64()
        seq = T.int64()
        qkv = T.match_buffer(var_qkv, (batch, seq, 3 * width), dtype)
        q = T.match_buffer(var_q, (batch, seq, heads, head_dim), dtype)
        k = T.match_buffer(var_k, (batch, seq, heads, head_dim), dtype)
        v = T.match_buffer(var_v, (batch, seq, heads, head_dim), dtype)
        # cos and sin of every (position value, frequency) the grid uses: a few hundred
        # evaluations instead of one per rotated feature of every head of q and k.
        cos_table = T.alloc_buffer((position_values(seq, grid_w), freqs), "float32")
        sin_table = T.alloc_buffer((position_values(seq, grid_w), freqs), "float32")
        for p, i in T.grid(position_values(seq, grid_w), freqs):
            with T.sblock("rope_angles"):
                vp, vi = T.axis.remap("SS", [p, i])
                cos_table[vp, vi] = T.cos(angle(vp, vi))
                sin_table[vp, vi] = T.sin(angle(vp, vi))
        for b, s, h, d in T.grid(batch, seq, heads, head_dim):
            with T.sblock("rope_qkv"):
                vb, vs, vh, vd = T.axis.remap("SSSS", [b, s, h, d])
                if vd < rotated:
                    q[vb, vs, vh, vd] = rotate(qkv, cos_table, sin_table, vb, vs,
                                               vh * head_dim, vd, grid_w)
                    k[vb, vs, vh, vd] = rotate(qkv, cos_table, sin_table, vb, vs,
                                               width + vh * head_dim, vd, grid_w)
                else:
                    q[vb, vs, vh, vd] = qkv[vb, vs, vh * head_dim + vd]
                    k[vb, vs, vh, vd] = qkv[vb, vs, width + vh * head_dim + vd]
                v[vb, vs, vh, vd] = qkv[vb, vs, 2 * width + vh * head_dim + vd]

    return rope_qkv


def rope_qkv(
    qkv: nn.Tensor, grid_w, heads: int, head_dim: int, use_cls_token: bool
) -> tuple[nn.Tensor, nn.Tensor, nn.Tensor]:
    """Split `qkv [b, s, 3 * width]` into rotated q, rotated k and v, each `[b, s, heads, hd]`."""
    batch, seq, _ = qkv.shape
    kernel = make_rope_qkv_kernel(heads, head_dim, use_cls_token, qkv.dtype)
    head_shape = (batch, seq, heads, head_dim)
    return op.tensor_ir_op(
        kernel,
        "rope_qkv",
        args=[qkv, grid_w],
        out=tuple(nn.Tensor.placeholder(head_shape, qkv.dtype) for _ in range(3)),
    )
