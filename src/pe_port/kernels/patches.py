"""The patch gather of the patch embedding: pixels to one row per patch (TIR, any target)."""

from __future__ import annotations

import functools

from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op
from tvm.script import tirx as T

from pe_port.kernels.tvmscript import quick_frame_inspection


@functools.cache  # one parse per channel count, patch and dtype
@quick_frame_inspection()
def make_image_patches_kernel(channels: int, patch: int, dtype: str):
    """`[b, c, h, w]` pixels to `[b, (h / p) (w / p), c p p]` rows, one per patch, each in the
    `(c, ky, kx)` order of the conv weight: the patch embedding becomes a `dense`.

    Written as a kernel because the same gather as reshape/permute/reshape legalizes to loops
    whose every index is a chain of 64-bit divisions by symbolic sizes (20 ms at batch 8, 384px).
    Blocks, not loops: `schedule_cpu` parallelises it, dlight's fallback rule binds it to GPU
    threads (and TVM's reshape detection, which inspects every one-in one-out kernel of equal
    size, needs blocks to read).
    """

    @T.prim_func(private=True, s_tir=True)
    def patches(var_x: T.handle, var_out: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True})
        n_batch = T.int64()
        height = T.int64()
        width = T.int64()
        pixels = T.match_buffer(var_x, (n_batch, channels, height, width), dtype)
        out = T.match_buffer(
            var_out, (n_batch, height // patch * (width // patch), channels * patch * patch),
            dtype)
        for b, gy, gx, c, ky, kx in T.grid(n_batch, height // patch, width // patch, channels,
                                           patch, patch):
            with T.sblock("image_patches"):
                vb, vy, vx, vc, vky, vkx = T.axis.remap("SSSSSS", [b, gy, gx, c, ky, kx])
                out[vb, vy * (width // patch) + vx, (vc * patch + vky) * patch + vkx] = pixels[
                    vb, vc, vy * patch + vky, vx * patch + vkx]

    return patches


def image_patches(x: nn.Tensor, patch: int) -> nn.Tensor:
    """The patch rows of `x` (`make_image_patches_kernel`)."""
    batch, channels, image_h, image_w = x.shape
    channels = int(channels)
    tokens = (image_h // patch) * (image_w // patch)
    return op.tensor_ir_op(
        make_image_patches_kernel(channels, patch, x.dtype), "image_patches", args=[x],
        out=nn.Tensor.placeholder((batch, tokens, channels * patch * patch), x.dtype))
