"""The operations whose implementation depends on the target, as the model calls them.

Each function hands the call to the `Backend` (`pe_port.backends`) the graph is being built
with: `with ops.use_backend(backend): model.export_tvm(...)`. Outside such a block the generic
Relax ops are used. Same math in every backend: the parity suite runs each against the reference.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from tvm.relax.frontend import nn

from pe_port.backends import GENERIC, Backend

_backend: contextvars.ContextVar[Backend] = contextvars.ContextVar("pe_port_backend",
                                                                     default=GENERIC)


@contextlib.contextmanager
def use_backend(backend: Backend) -> Iterator[None]:
    """Build the graph inside this block with `backend`'s implementations."""
    if not isinstance(backend, Backend):
        raise TypeError(f"expected a pe_port.backends.Backend, got {backend!r}")
    token = _backend.set(backend)
    try:
        yield
    finally:
        _backend.reset(token)


def current_backend() -> Backend:
    return _backend.get()


def linear(x: nn.Tensor, weight: nn.Tensor, bias: nn.Tensor | None,
           activation: str | None = None, residual: nn.Tensor | None = None,
           gamma: nn.Tensor | None = None) -> nn.Tensor:
    """`residual + gamma * act(x @ weight.T + bias)`; bias, act, gamma, residual optional."""
    return _backend.get().linear(x, weight, bias, activation, residual, gamma)


def layer_norm(x: nn.Tensor, weight: nn.Tensor, bias: nn.Tensor, eps: float) -> nn.Tensor:
    """LayerNorm over the last axis."""
    return _backend.get().layer_norm(x, weight, bias, eps)


def project(x: nn.Tensor, proj: nn.Tensor) -> nn.Tensor:
    """`x @ proj` for an `[in, out]` matrix (the tower's final projection)."""
    return _backend.get().project(x, proj)


def attention(q: nn.Tensor, k: nn.Tensor, v: nn.Tensor, scale: float,
              causal: bool = False) -> nn.Tensor:
    """softmax(q k^T * scale) v over `[b, s, heads, head_dim]`, heads merged in the output;
    `causal`: query i sees keys 0..i only, the others get weight exactly 0."""
    return _backend.get().attention(q, k, v, scale, causal)


def patch_embed(x: nn.Tensor, weight: nn.Tensor, patch: int) -> nn.Tensor:
    """Conv2d(kernel = stride = patch, no bias) as `[b, gh * gw, width]` tokens, row-major."""
    return _backend.get().patch_embed(x, weight, patch)
