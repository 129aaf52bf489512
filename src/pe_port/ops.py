"""The operations whose implementation depends on the target, behind one small interface.

The model calls `linear`, `attention` and `patch_embed`; under `kernel_backend("cpu")` they emit
the hand-written CPU kernels (`pe_port.kernels.cpu`), otherwise plain Relax ops that any
backend legalizes (the GPU path schedules those with dlight). Same math either way: the parity
suite runs on both.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op

from pe_port.kernels import cpu

BACKENDS = ("generic", "cpu")
_backend: contextvars.ContextVar[str] = contextvars.ContextVar("pe_port_backend",
                                                                 default="generic")


@contextlib.contextmanager
def kernel_backend(name: str) -> Iterator[None]:
    """Build the graph inside this block with the `name` implementations."""
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; one of {BACKENDS}")
    token = _backend.set(name)
    try:
        yield
    finally:
        _backend.reset(token)


def _fast_cpu(x: nn.Tensor) -> bool:
    return _backend.get() == "cpu" and x.dtype == "float32"


def linear(
    x: nn.Tensor,
    weight: nn.Tensor,
    bias: nn.Tensor,
    activation: str | None = None,
    residual: nn.Tensor | None = None,
    gamma: nn.Tensor | None = None,
) -> nn.Tensor:
    """`residual + gamma * act(x @ weight.T + bias)`; each of act, gamma, residual optional."""
    if _fast_cpu(x):
        return cpu.dense(x, weight, bias, activation, residual, gamma)
    y = op.matmul(x, op.permute_dims(weight)) + bias
    if activation == "gelu":
        y = op.gelu(y)
    if gamma is not None:
        y = y * gamma
    return y if residual is None else residual + y


def layer_norm(x: nn.Tensor, weight: nn.Tensor, bias: nn.Tensor, eps: float) -> nn.Tensor:
    """LayerNorm over the last axis of `[batch, seq, width]`."""
    if _fast_cpu(x) and x.ndim == 3 and cpu.layer_norm_fits(int(x.shape[-1])):
        return cpu.layer_norm(x, weight, bias, eps)
    return op.layer_norm(x, int(x.shape[-1]), weight, bias, eps=eps)


def project(x: nn.Tensor, proj: nn.Tensor) -> nn.Tensor:
    """`x @ proj` for a `[in, out]` matrix (the tower's final projection, stored unlike Linear)."""
    if _fast_cpu(x):
        # Transposed and packed once, at load: the transform depends on the weight alone.
        return cpu.dense(x, op.permute_dims(proj), bias=None)
    return op.matmul(x, proj)


def attention(q: nn.Tensor, k: nn.Tensor, v: nn.Tensor, scale: float) -> nn.Tensor:
    """softmax(q k^T * scale) v over `[b, s, heads, head_dim]` inputs, heads merged in the
    output: `[b, s_q, heads * head_dim]`."""
    if _fast_cpu(q):
        return cpu.attention(q, k, v, scale)
    batch, seq, heads, head_dim = q.shape
    q, k, v = (op.permute_dims(t, [0, 2, 1, 3]) for t in (q, k, v))
    scores = op.matmul(q, op.permute_dims(k, [0, 1, 3, 2])) * scale
    out = op.matmul(op.softmax(scores, axis=-1), v)
    return op.reshape(op.permute_dims(out, [0, 2, 1, 3]), (batch, seq, heads * head_dim))


def patch_embed(x: nn.Tensor, weight: nn.Tensor, patch: int) -> nn.Tensor:
    """Conv2d(kernel = stride = patch, no bias) as `[b, gh * gw, width]` tokens, row-major."""
    batch, channels, height, width_px = x.shape
    width = int(weight.shape[0])
    grid_h, grid_w = height // patch, width_px // patch
    if not _fast_cpu(x):
        patches = op.conv2d(x, weight, stride=patch)  # [b, width, gh, gw]
        return op.permute_dims(op.reshape(patches, (batch, width, grid_h * grid_w)), [0, 2, 1])
    # As a matmul over patches (c, ky, kx order, as the conv weight is laid out).
    tiles = cpu.image_patches(x, patch)
    flat_weight = op.reshape(weight, (width, channels * patch * patch))
    return cpu.dense(tiles, flat_weight, bias=None)
