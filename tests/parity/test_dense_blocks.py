"""The dense kernel's row blocks (`kernels/dense.py`) against NumPy, on inputs small enough to test.

A model only reaches the blocked order past `X_CACHED_BYTES` of input (8 MiB: batch 8 of the
larger towers), which the module tests never build. Here the thresholds are made tiny, so the
blocked walk runs on a few rows: blocks of one and of several row tiles, a last block that is
partly past the end, rows that are not a multiple of the tile, and every epilogue.

Tolerance: relative error 1e-5 against float64, as the module tests (sums of at most 64 fp32
products sit near 1e-7).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import compile_kernel, dense_reference, rel_error

TOLERANCE = 1e-5


@functools.cache
def compiled_dense(k: int, n: int, activation: str | None, residual: str | None,
                   block_rows: int):
    """The kernel for this CPU, blocked whatever its input (`x_cached_bytes=0`), in blocks of
    about `block_rows` rows."""
    from pe_port.build import cpu_target
    from pe_port.kernels.dense import dense_tile, make_dense_kernel
    from pe_port.kernels.isa import vector_isa

    isa = vector_isa(cpu_target())
    _, cols = dense_tile(n, isa)
    kernel = make_dense_kernel(k, n, activation, residual, isa, x_cached_bytes=0,
                               x_block_bytes=block_rows * k * 4)
    return compile_kernel(kernel)["main"], cols


def run_dense(x, weight, bias, activation, residual, gamma, block_rows):
    import tvm

    n, k = weight.shape
    mode = None if residual is None else ("add" if gamma is None else "scaled_add")
    kernel, cols = compiled_dense(k, n, activation, mode, block_rows)
    packed = np.ascontiguousarray(weight.reshape(n // cols, cols, k).transpose(0, 2, 1))
    args = [x, packed, bias, *(a for a in (residual, gamma) if a is not None)]
    out = tvm.runtime.tensor(np.zeros((*x.shape[:2], n), np.float32))
    kernel(*[tvm.runtime.tensor(a) for a in args], out)
    return out.numpy()


@pytest.mark.parametrize("k, n, activation, residual, gamma, block_rows", [
    (48, 32, "gelu", None, False, 1),  # one row tile per block
    (40, 48, None, "add", False, 13),  # a few tiles per block
    (24, 16, None, "add", True, 30),  # LayerScale residual
])
@settings(max_examples=8, deadline=None)
@given(batch=st.integers(1, 3), seq=st.integers(1, 45), seed=st.integers(0, 2**16))
def test_blocked_dense_matches_numpy(k, n, activation, residual, gamma, block_rows,
                                     batch, seq, seed):
    rng = np.random.default_rng(seed)

    def draw(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    x, weight, bias = draw(batch, seq, k), draw(n, k), draw(n)
    res = draw(batch, seq, n) if residual else None
    scale = draw(n) if gamma else None
    got = run_dense(x, weight, bias, activation, res, scale, block_rows)
    want = dense_reference(*(a.astype(np.float64) for a in (x, weight, bias)), activation,
                           res, scale)
    error = rel_error(got, want)
    assert error <= TOLERANCE, f"relative error {error:.2e} > {TOLERANCE:.0e}"
