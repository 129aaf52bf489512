"""Position-embedding resize: PyTorch's bilinear `align_corners=False`, written out in TE."""

from __future__ import annotations

from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op


def resize_posemb(grid: nn.Tensor, out_h, out_w) -> nn.Tensor:
    """Bilinearly resize a `[side, side, width]` grid to `[out_h, out_w, width]`.

    Why a kernel: this is `F.interpolate(mode="bilinear", align_corners=False)` written out so
    its arithmetic is visibly PyTorch's: source coordinate `(dst + 0.5) * in / out - 0.5`,
    clamped at 0, the upper neighbour clamped to the last row/column. Channels-last keeps the
    result ready to add to the tokens without a transpose. The output size may be symbolic.
    """

    def source_coord(dst, in_size, out_size):
        scale = tirx.Cast("float32", in_size) / tirx.Cast("float32", out_size)
        src = (tirx.Cast("float32", dst) + 0.5) * scale - 0.5
        return tirx.max(src, tirx.const(0.0, "float32"))

    def compute(table: te.Tensor, out_h_var, out_w_var):
        side_h, side_w, width = table.shape

        def sample(y, x, c):
            src_y = source_coord(y, side_h, out_h_var)
            src_x = source_coord(x, side_w, out_w_var)
            y0 = tirx.Cast("int64", tirx.floor(src_y))
            x0 = tirx.Cast("int64", tirx.floor(src_x))
            y1 = tirx.min(y0 + 1, side_h - 1)
            x1 = tirx.min(x0 + 1, side_w - 1)
            wy = src_y - tirx.Cast("float32", y0)
            wx = src_x - tirx.Cast("float32", x0)

            def at(yy, xx):
                return tirx.Cast("float32", table[yy, xx, c])

            top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
            bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
            return tirx.Cast(table.dtype, top * (1 - wy) + bottom * wy)

        return te.compute((out_h_var, out_w_var, width), sample, name="resize_posemb")

    return op.tensor_expr_op(compute, "resize_posemb", args=[grid, out_h, out_w])
