"""The operations whose implementation depends on the target, behind one small interface.

The model calls `linear`, `layer_norm`, `attention`, `project` and `patch_embed`. Backends:
- "generic": plain Relax ops that any target legalizes; matmuls accumulate and LayerNorm
  computes its statistics in float32 whatever the activation dtype.
- "cpu": the hand-written CPU kernels (`pe_port.kernels.cpu`) for float32.
- "gpu": the generic ops (matmuls on the tensor cores for fp16/bf16, scheduled by
  `kernels.gpu_schedule`), the flash attention kernel (`pe_port.kernels.gpu`) and the patch
  embedding as a matmul.
- "gpu_emulated": the "gpu" graph with its kernels in their serial form, so the parity suite
  runs the GPU graph on a CPU.
- "gpu_unfused": the "gpu" graph with attention as two matmuls around a float32 softmax
  instead of the flash kernel: which is faster depends on the sequence length and the GPU, so
  `scripts/gpu_bench.py --attention` times both.
Same math in all: the parity suite runs each against the reference.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op

from pe_port.kernels import cpu, gpu
from pe_port.kernels.patches import image_patches

BACKENDS = ("generic", "cpu", "gpu", "gpu_emulated", "gpu_unfused")
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


def _gpu() -> bool:
    return _backend.get() in ("gpu", "gpu_emulated", "gpu_unfused")


def _f32(x: nn.Tensor | None) -> nn.Tensor | None:
    """`x` in float32 (None stays None: an absent bias, gamma or residual)."""
    return x if x is None or x.dtype == "float32" else op.astype(x, "float32")


def _as(x: nn.Tensor, dtype: str) -> nn.Tensor:
    return x if x.dtype == dtype else op.astype(x, dtype)


def linear(
    x: nn.Tensor,
    weight: nn.Tensor,
    bias: nn.Tensor | None,
    activation: str | None = None,
    residual: nn.Tensor | None = None,
    gamma: nn.Tensor | None = None,
) -> nn.Tensor:
    """`residual + gamma * act(x @ weight.T + bias)`; each of bias, act, gamma, residual
    optional."""
    if _fast_cpu(x):
        return cpu.dense(x, weight, bias, activation, residual, gamma)
    # Accumulate and run the epilogue in float32 whatever the dtype (FuseOps makes it one
    # kernel; on the GPU fp16/bf16 run on the tensor cores), store in x's dtype.
    y = op.matmul(x, op.permute_dims(weight), out_dtype="float32")
    return _as(_epilogue(y, _f32(bias), activation, _f32(residual), _f32(gamma)), x.dtype)


def _epilogue(y: nn.Tensor, bias: nn.Tensor | None, activation: str | None,
              residual: nn.Tensor | None, gamma: nn.Tensor | None) -> nn.Tensor:
    if bias is not None:
        y = y + bias
    if activation == "gelu":
        y = op.gelu(y)
    if gamma is not None:
        y = y * gamma
    return y if residual is None else residual + y


def layer_norm(x: nn.Tensor, weight: nn.Tensor, bias: nn.Tensor, eps: float) -> nn.Tensor:
    """LayerNorm over the last axis of `[batch, seq, width]`."""
    if _fast_cpu(x) and x.ndim == 3 and cpu.layer_norm_fits(int(x.shape[-1])):
        return cpu.layer_norm(x, weight, bias, eps)
    # Statistics in float32 whatever the dtype (Relax's layer_norm also refuses bfloat16);
    # FuseOps makes the casts and the normalization one kernel.
    width = int(x.shape[-1])
    return _as(op.layer_norm(_f32(x), width, _f32(weight), _f32(bias), eps=eps), x.dtype)


def project(x: nn.Tensor, proj: nn.Tensor) -> nn.Tensor:
    """`x @ proj` for a `[in, out]` matrix (the tower's final projection, stored unlike Linear)."""
    if _fast_cpu(x):
        # Transposed and packed once, at load: the transform depends on the weight alone.
        return cpu.dense(x, op.permute_dims(proj), bias=None)
    return _as(op.matmul(x, proj, out_dtype="float32"), x.dtype)


def attention(q: nn.Tensor, k: nn.Tensor, v: nn.Tensor, scale: float) -> nn.Tensor:
    """softmax(q k^T * scale) v over `[b, s, heads, head_dim]` inputs, heads merged in the
    output: `[b, s_q, heads * head_dim]`."""
    if _fast_cpu(q):
        return cpu.attention(q, k, v, scale)
    if _gpu() and _backend.get() != "gpu_unfused":
        return gpu.attention(q, k, v, scale, emulate=_backend.get() == "gpu_emulated")
    # Scores and softmax in float32, the weights back in q's dtype for the second matmul.
    batch, seq, heads, head_dim = q.shape
    q, k, v = (op.permute_dims(t, [0, 2, 1, 3]) for t in (q, k, v))
    scores = op.matmul(q, op.permute_dims(k, [0, 1, 3, 2]), out_dtype="float32") * scale
    weights = _as(op.softmax(scores, axis=-1), v.dtype)
    out = _as(op.matmul(weights, v, out_dtype="float32"), v.dtype)
    return op.reshape(op.permute_dims(out, [0, 2, 1, 3]), (batch, seq, heads * head_dim))


def patch_embed(x: nn.Tensor, weight: nn.Tensor, patch: int) -> nn.Tensor:
    """Conv2d(kernel = stride = patch, no bias) as `[b, gh * gw, width]` tokens, row-major."""
    batch, channels, height, width_px = x.shape
    width = int(weight.shape[0])
    if _fast_cpu(x) or _gpu():
        # As a matmul over patches (c, ky, kx order, as the conv weight is laid out): the CPU's
        # dense kernel, or the GPU's tensor cores with float32 accumulation.
        flat_weight = op.reshape(weight, (width, channels * patch * patch))
        return linear(image_patches(x, patch), flat_weight, bias=None)
    patches = op.conv2d(x, weight, stride=patch)  # [b, width, gh, gw]
    tokens = (height // patch) * (width_px // patch)
    return op.permute_dims(op.reshape(patches, (batch, width, tokens)), [0, 2, 1])
