"""Layer norm on the CPU (`cpu_layer_norm`, TIR). The GPU's is TVM's, scheduled by dlight."""

from __future__ import annotations

import functools

from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op
from tvm.script import tirx as T

from pe_port.kernels.tvmscript import quick_frame_inspection


@functools.cache  # one parse per width
@quick_frame_inspection()
def make_layer_norm_kernel(width: int, eps: float):
    """`(x - mean) / sqrt(var + eps) * weight + bias` over the last axis of `[b, s, width]`.

    One row per parallel task, 16 lanes at a time: the row's sum, then the sum of squared
    deviations (two passes, as PyTorch and TVM's own layer norm do), then the output. TVM's
    reduction schedule reduces the row one element at a time, three times slower.
    """
    lanes = 16
    vectors = width // lanes

    @T.prim_func(private=True)
    def layer_norm(var_x: T.handle, var_weight: T.handle, var_bias: T.handle, var_out: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True, "tirx.is_scheduled": True})
        batch = T.int64()
        seq = T.int64()
        x = T.match_buffer(var_x, (batch, seq, width), "float32")
        weight = T.match_buffer(var_weight, (width,), "float32")
        bias = T.match_buffer(var_bias, (width,), "float32")
        out = T.match_buffer(var_out, (batch, seq, width), "float32")
        for row in T.parallel(batch * seq):
            b: T.let[T.int64] = row // seq  # a let: a plain name would be a buffer per row
            s: T.let[T.int64] = row % seq
            partial = T.alloc_buffer((lanes,), "float32")
            stats = T.alloc_buffer((2,), "float32")  # mean, 1 / std
            for j in T.vectorized(lanes):
                partial[j] = T.float32(0)
            for v in range(vectors):
                for j in T.vectorized(lanes):
                    partial[j] = partial[j] + x[b, s, v * lanes + j]
            stats[0] = T.float32(0)
            for j in range(lanes):
                stats[0] = stats[0] + partial[j]
            stats[0] = stats[0] / T.float32(width)
            for j in T.vectorized(lanes):
                partial[j] = T.float32(0)
            for v in range(vectors):
                for j in T.vectorized(lanes):
                    partial[j] = partial[j] + (x[b, s, v * lanes + j] - stats[0]) * (
                        x[b, s, v * lanes + j] - stats[0])
            stats[1] = T.float32(0)
            for j in range(lanes):
                stats[1] = stats[1] + partial[j]
            stats[1] = T.rsqrt(stats[1] / T.float32(width) + T.float32(eps))
            for v in range(vectors):
                for j in T.vectorized(lanes):
                    out[b, s, v * lanes + j] = (x[b, s, v * lanes + j] - stats[0]) * stats[1] * (
                        weight[v * lanes + j]) + bias[v * lanes + j]

    return layer_norm


def cpu_layer_norm_fits(width: int) -> bool:
    """Whether `layer_norm` takes this width: whole 16-lane vectors."""
    return width % 16 == 0


def cpu_layer_norm(x: nn.Tensor, weight: nn.Tensor, bias: nn.Tensor, eps: float) -> nn.Tensor:
    """Layer norm over the last axis of `[batch, seq, width]` (width a multiple of 16)."""
    kernel = make_layer_norm_kernel(int(x.shape[-1]), eps)
    return op.tensor_ir_op(kernel, "layer_norm", args=[x, weight, bias],
                           out=nn.Tensor.placeholder(x.shape, "float32"))
