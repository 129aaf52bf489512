"""The TIR RoPE kernel against the reference rotation, for any grid, head size and cls choice."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tvm.relax.frontend import nn

from pe_port.kernels import rope_qkv
from reference.rope import apply_rope, rope_angles
from tests.helpers import compile_component, rel_error

# Angles are computed in float32 on both sides; the only difference is the cos/sin libm and
# pow rounding (a few ulp), far below the fp32 module tolerance.
TOLERANCE = 1e-5


class RopeQKV(nn.Module):
    """Wraps the kernel so it can be exported alone: `qkv -> (q, k, v)`."""

    def __init__(self, heads: int, head_dim: int, use_cls_token: bool) -> None:
        self.heads, self.head_dim, self.use_cls_token = heads, head_dim, use_cls_token

    def forward(self, qkv: nn.Tensor, grid_w):
        return rope_qkv(qkv, grid_w, self.heads, self.head_dim, self.use_cls_token)


@functools.cache
def compiled_rope(heads: int, head_dim: int, use_cls_token: bool):
    spec = {
        "qkv": nn.spec.Tensor(["batch", "seq", 3 * heads * head_dim], "float32"),
        "grid_w": int,
    }
    return compile_component(RopeQKV(heads, head_dim, use_cls_token), spec)


def reference_rope(qkv: np.ndarray, heads, head_dim, grid_h, grid_w, use_cls_token):
    batch, seq, _ = qkv.shape
    split = torch.from_numpy(qkv).double().view(batch, seq, 3, heads, head_dim)
    q, k, v = (split[:, :, i].transpose(1, 2) for i in range(3))  # [b, h, s, d]
    angles = rope_angles(head_dim, grid_h, grid_w, use_cls_token)
    rotated = [apply_rope(t, angles) for t in (q, k)] + [v]
    return [t.transpose(1, 2).numpy() for t in rotated]  # back to [b, s, h, d]


# (heads, head_dim, cls): each is a compile (tens of seconds of a 2-core machine), so three:
# head_dim 6 (3 features per axis: one pair rotated, one left as it is), the head size of the
# rotation test below, and PE's own head size without cls. Grids, batches, values: drawn freely.
KERNELS = [(3, 6, True), (2, 8, True), (1, 64, False)]


# PE's own head size is `slow` (`make test-all`): the kernel's index arithmetic is the same.
@pytest.mark.parametrize("kernel", KERNELS[:2] + [pytest.param(KERNELS[2],
                                                               marks=pytest.mark.slow)])
@settings(max_examples=8, deadline=None)
@given(
    batch=st.integers(1, 3),
    grid_h=st.integers(1, 9),
    grid_w=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_rope_matches_reference_for_any_grid(kernel, batch, grid_h, grid_w, seed):
    heads, head_dim, use_cls_token = kernel
    seq = grid_h * grid_w + int(use_cls_token)
    qkv = np.random.default_rng(seed).standard_normal((batch, seq, 3 * heads * head_dim))
    qkv = qkv.astype(np.float32)
    got = compiled_rope(heads, head_dim, use_cls_token)({}, qkv, grid_w)
    want = reference_rope(qkv, heads, head_dim, grid_h, grid_w, use_cls_token)
    for name, g, w in zip("qkv", got, want, strict=True):
        assert rel_error(g, w) <= TOLERANCE, f"{name}: error {rel_error(g, w):.2e}"


def test_rope_rotates_q_and_k_but_not_v_nor_the_cls_token():
    heads, head_dim, grid = 2, 8, 3
    qkv = np.random.default_rng(0).standard_normal((1, 1 + grid * grid, 3 * heads * head_dim))
    q, k, v = compiled_rope(heads, head_dim, True)({}, qkv.astype(np.float32), grid)
    plain = qkv.reshape(1, -1, 3, heads, head_dim).astype(np.float32)
    np.testing.assert_array_equal(v, plain[:, :, 2])
    np.testing.assert_allclose(q[:, 0], plain[:, 0, 0], rtol=1e-6)  # cls: angle 0
    assert rel_error(q[:, 1:], plain[:, 1:, 0]) > 0.1  # patches really rotate
    assert rel_error(k[:, 1:], plain[:, 1:, 1]) > 0.1
