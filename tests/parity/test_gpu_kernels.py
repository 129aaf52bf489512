"""The GPU path on this CPU: its kernels and its whole graph run in their serial form
(`emulate=True`, backend "gpu_emulated"), so indexing, masking, the online softmax and every
dtype cast are checked here; the CUDA builds of the same kernels are checked in test_cuda.py.

Tolerances (relative error, float64 references):
- fp32: 1e-5, as for every fp32 component (a correct kernel sits near 1e-7).
- The attention kernel in fp16 / bf16: its inputs are rounded to the dtype before the reference
  sees them and it accumulates in fp32, so the one error left is the rounding of its output:
  at most 2 units of roundoff (fp16 u = 2^-11, bf16 u = 2^-8).
- The whole tower in fp16 / bf16: every stored activation is rounded, as in PyTorch, so the
  measure is PyTorch's own error in that dtype on the same weights and images: at most twice
  it, and never less than 2 units of roundoff (`tests.helpers.half_precision_limit`).
  Measured with the flash kernel: fp16 0.98x, bf16 1.12x PyTorch's error; the unfused variant
  rounds the softmax weights to the dtype, as PyTorch's math attention does, and sits at
  about 2x PyTorch's fused CPU attention in fp16.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st

from pe_port.config import custom_config
from pe_port.kernels.attention import make_flash_attention_kernel
from pe_port.kernels.dense import make_gpu_dense_kernel
from pe_port.runtime import to_numpy_dtype
from tests.helpers import (
    UNIT_ROUNDOFF,
    compile_kernel,
    compile_tower,
    dense_reference,
    half_precision_limit,
    numpy_weights,
    random_images,
    reference_model,
    rel_error,
)

TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def attention_tolerance(dtype: str) -> float:
    return 1e-5 if dtype == "float32" else 2 * UNIT_ROUNDOFF[dtype]


@functools.cache
def emulated_attention(heads: int, head_dim: int, dtype: str):
    kernel = make_flash_attention_kernel(heads, head_dim, head_dim**-0.5, dtype, emulate=True)
    return compile_kernel(kernel)["main"]


def reference_attention(q, k, v, scale):
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", weights, v)
    return out.reshape(out.shape[0], out.shape[1], -1)


# (dtype, heads, head_dim): each is a compile, so four that take every dtype and head size;
# `make test` builds two (fp32 with one head, fp16 at PE's head size), the others are `slow`.
KERNELS = [("float32", 1, 8), ("float16", 3, 64),
           pytest.param(("float32", 3, 64), marks=pytest.mark.slow),
           pytest.param(("bfloat16", 2, 16), marks=pytest.mark.slow)]


@pytest.mark.parametrize("kernel", KERNELS)
@settings(max_examples=8, deadline=None)
@given(
    batch=st.integers(1, 2),
    queries=st.integers(1, 80),  # across the 64-row query tile
    keys=st.integers(1, 40),  # across the 16-key tile
    seed=st.integers(0, 2**16),
)
def test_flash_attention_matches_reference(kernel, batch, queries, keys, seed):
    dtype, heads, head_dim = kernel
    rng = np.random.default_rng(seed)
    np_dtype = to_numpy_dtype(dtype)
    q, k, v = (rng.standard_normal((batch, n, heads, head_dim)).astype(np_dtype)
               for n in (queries, keys, keys))
    out = tvm.runtime.tensor(np.zeros((batch, queries, heads * head_dim), np_dtype))
    emulated_attention(heads, head_dim, dtype)(*(tvm.runtime.tensor(t) for t in (q, k, v)), out)
    want = reference_attention(*(t.astype(np.float64) for t in (q, k, v)), head_dim**-0.5)
    assert rel_error(out.numpy().astype(np.float32), want) <= attention_tolerance(dtype)


def test_flash_attention_softmax_survives_large_scores():
    """Scores of +-1e4 overflow a naive exp; the running max keeps the softmax exact."""
    heads, head_dim = 1, 8
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, n, heads, head_dim)).astype(np.float32) * 40
               for n in (5, 33, 33))
    out = tvm.runtime.tensor(np.zeros((1, 5, head_dim), np.float32))
    emulated_attention(heads, head_dim, "float32")(*(tvm.runtime.tensor(t) for t in (q, k, v)),
                                                   out)
    got = out.numpy()
    assert np.isfinite(got).all()
    assert rel_error(got, reference_attention(q.astype(np.float64), k, v, head_dim**-0.5)) <= 1e-5




@functools.cache
def cpu_gpu_dense(k: int, n: int, dtype: str, activation: str | None, residual: str | None):
    """The GPU build's dense kernel before its schedule (the loop nest dlight tiles)."""
    return compile_kernel(make_gpu_dense_kernel(k, n, dtype, activation, residual))["main"]


# (dtype, k, n, activation, residual): each a compile; odd sizes, every epilogue once.
DENSES = [("float16", 24, 40, "gelu", None), ("float16", 16, 8, None, "scaled_add"),
          pytest.param(("bfloat16", 16, 8, None, "add"), marks=pytest.mark.slow)]


@pytest.mark.parametrize("case", DENSES)
@settings(max_examples=6, deadline=None)
@given(batch=st.integers(1, 3), seq=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_gpu_dense_matches_reference(case, batch, seq, seed):
    """`x @ w.T + bias` with `w` read in its stored `[out, in]` layout, then the epilogue, in
    float32 on dtype inputs and rounded to the dtype once: against float64 on the same
    (rounded) inputs, at most 2 units of roundoff of the dtype (the one rounding of the output;
    the float32 sums and erf add ~1e-7)."""
    dtype, k, n, activation, residual = case
    rng = np.random.default_rng(seed)
    np_dtype = to_numpy_dtype(dtype)
    x = rng.standard_normal((batch, seq, k)).astype(np_dtype)
    w, bias, gamma = (rng.standard_normal(shape).astype(np_dtype) for shape in ((n, k), n, n))
    res = rng.standard_normal((batch, seq, n)).astype(np_dtype)
    args = [x, w, bias, *([res] if residual else []), *([gamma] if residual == "scaled_add"
                                                         else [])]
    out = tvm.runtime.tensor(np.full((batch, seq, n), np.nan, np_dtype))
    cpu_gpu_dense(k, n, dtype, activation, residual)(*(tvm.runtime.tensor(a) for a in args), out)
    want = dense_reference(*(a.astype(np.float64) for a in (x, w, bias)), activation,
                           res.astype(np.float64) if residual else None,
                           gamma.astype(np.float64) if residual == "scaled_add" else None)
    assert rel_error(out.numpy().astype(np.float64), want) <= 2 * UNIT_ROUNDOFF[dtype]

# Each case is a compile (minutes of a 2-core machine): `make test` builds the fp16 graph (the
# flash kernel, fp32 accumulation and statistics, the patch embedding as a matmul); fp32, bf16
# (the fp16 graph with another element type) and the unfused variant are `slow`.
GRAPHS = [("float16", "gpu_emulated"),
          pytest.param("float32", "gpu_emulated", marks=pytest.mark.slow),
          pytest.param("float32", "gpu_unfused", marks=pytest.mark.slow),
          pytest.param("bfloat16", "gpu_emulated", marks=pytest.mark.slow),
          pytest.param("float16", "gpu_unfused", marks=pytest.mark.slow),
          pytest.param("bfloat16", "gpu_unfused", marks=pytest.mark.slow)]


@functools.cache
def gpu_graph_reference(dtype: str):
    """The float64 reference and, for fp16 / bf16, the same tower in that dtype."""
    config = custom_config()
    ref = reference_model(config, seed=3)
    half = reference_model(config, seed=3).to(TORCH_DTYPES[dtype]) if dtype != "float32" else None
    return config, ref, half


@pytest.mark.parametrize("dtype, backend", GRAPHS)
@settings(max_examples=3, deadline=None)
@given(batch=st.integers(1, 2), grid_h=st.integers(1, 6), grid_w=st.integers(1, 6),
       seed=st.integers(0, 2**16))
def test_gpu_graph_matches_reference(dtype, backend, batch, grid_h, grid_w, seed):
    """The tower as the GPU build makes it (fp32 accumulation, fp32 LayerNorm statistics,
    flash attention or the unfused variant, patch embedding as a matmul), on this CPU, at
    drawn image sizes (rarely the pretrain size: the posemb is resized, RoPE follows)."""
    config, ref, half = gpu_graph_reference(dtype)
    images = random_images(batch, grid_h * 8, grid_w * 8, seed)
    with torch.no_grad():
        want = ref(torch.from_numpy(images).double()).numpy()
        if half is not None:
            own = half(torch.from_numpy(images).to(TORCH_DTYPES[dtype])).float().numpy()
            torch_error = rel_error(own, want)
    got = compile_tower(config, dtype, backend)(numpy_weights(ref), images)
    limit = 1e-5 if dtype == "float32" else half_precision_limit(dtype, torch_error)
    assert rel_error(got, want) <= limit
