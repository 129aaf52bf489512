"""Arithmetic the hand-written kernels share: constants and vectorisable exp (TIR helpers)."""

from __future__ import annotations

from tvm.script import tirx as T

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
NEG_LARGE = -3.0e38  # a finite stand-in for -inf: padded keys, initial maxima


def exp_nonpositive(x):
    """`exp(x)` for `x <= 0`, vectorisable: `2^n * 2^f` with a degree-6 polynomial for `2^f`.

    LLVM lowers `exp` to a scalar libm call per element; softmax over every (query, key) pair
    needs millions per image, so the kernel uses this inline form (relative error < 2e-7).
    Inputs below -87 are clamped, where the result (< 2e-38) is negligible next to the row's
    maximum term, 1.
    """
    t = T.max(x, T.float32(-87.0)) * T.float32(LOG2E)
    whole = T.floor(t + T.float32(0.5))
    y = (t - whole) * T.float32(LN2)  # |y| <= ln(2) / 2
    poly = T.float32(1.0 / 720.0)
    for coeff in (1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0):
        poly = poly * y + T.float32(coeff)
    exponent_bits = T.shift_left(T.Cast("int32", whole) + 127, 23)
    return poly * T.reinterpret("float32", exponent_bits)
