"""The text tower against its reference: causal attention in every backend, the causal block,
the whole tower, with random weights (every bias and embedding random) and drawn shapes.

Tolerances (relative error against a float64 reference with the same fp32-rounded weights), as
in test_modules.py: 1e-5 per module (fp32 keeps ~7 digits; a correct module sits near 1e-7, a
wrong one above 1e-3), 1e-4 for the whole tower (rounding compounds over the blocks).
A masked key must get weight exactly 0, as PyTorch's `-inf` mask gives: that is checked bit for
bit, not within a tolerance.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tvm.relax.frontend import nn

import reference
from pe_port import model, ops
from pe_port.config import PETextConfig
from tests.helpers import compile_component, numpy_weights, randomize_, rel_error
from tests.parity.test_modules import random_tokens, structures, tokens_spec

TOLERANCE = 1e-5
MODEL_TOLERANCE = 1e-4
SETTINGS = settings(max_examples=10, deadline=None)

# The longest official context (G14): it crosses the CPU kernel's 64-key chunk and the flash
# kernel's 64-query block.
LONGEST_CONTEXT = 72
batches = st.integers(1, 8)
seeds = st.integers(0, 2**16)


def assert_close(got: np.ndarray, want: np.ndarray, tolerance: float = TOLERANCE) -> None:
    error = rel_error(got, want)
    assert error <= tolerance, f"relative error {error:.2e} > {tolerance:.0e}"


# ---- causal attention ----------------------------------------------------------------------------

class CausalAttention(nn.Module):
    """`ops.attention` with the causal mask, alone, so that each backend's kernel can be built."""

    def __init__(self, head_dim: int) -> None:
        self.scale = head_dim**-0.5

    def forward(self, q: nn.Tensor, k: nn.Tensor, v: nn.Tensor) -> nn.Tensor:
        return ops.attention(q, k, v, self.scale, causal=True)


@functools.cache
def compiled_attention(backend: str, heads: int, head_dim: int):
    spec = nn.spec.Tensor(["batch", "seq", heads, head_dim], "float32")
    run = compile_component(CausalAttention(head_dim), {"q": spec, "k": spec, "v": spec},
                            backend)
    return functools.partial(run, {})


def masked_softmax_attention(q, k, v, scale):
    """PyTorch's causal attention in float64: scores plus -inf above the diagonal."""
    seq, keys = q.shape[1], k.shape[1]
    mask = torch.full((seq, keys), float("-inf"), dtype=torch.float64).triu(1)
    scores = torch.einsum("bqhd,bkhd->bhqk", *(torch.from_numpy(t).double() for t in (q, k)))
    weights = torch.softmax(scores * scale + mask, dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", weights, torch.from_numpy(v).double())
    return out.reshape(out.shape[0], seq, -1).numpy()


def random_qkv(batch: int, seq: int, heads: int, head_dim: int, seed: int):
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal((batch, seq, heads, head_dim)).astype(np.float32)
                 for _ in range(3))


# (backend, heads, head_dim): `make test` builds the CPU kernel and the flash kernel in its
# serial form at the text towers' head size 64; the generic ops (the fp16/bf16 CPU path) and a
# head size that is no multiple of the 16-float vector are `slow`.
ATTENTION = [("cpu", 2, 64), ("gpu_emulated", 2, 64),
             pytest.param(("generic", 2, 64), marks=pytest.mark.slow),
             pytest.param(("cpu", 3, 24), marks=pytest.mark.slow),
             pytest.param(("gpu_emulated", 1, 24), marks=pytest.mark.slow)]


@pytest.mark.parametrize("kernel", ATTENTION)
@SETTINGS
@given(st.integers(1, 3), st.integers(1, LONGEST_CONTEXT), seeds)
def test_causal_attention_matches_masked_softmax(kernel, batch, seq, seed):
    backend, heads, head_dim = kernel
    q, k, v = random_qkv(batch, seq, heads, head_dim, seed)
    got = compiled_attention(backend, heads, head_dim)(q, k, v)
    assert_close(got, masked_softmax_attention(q, k, v, head_dim**-0.5))


@pytest.mark.parametrize("kernel", ATTENTION)
@SETTINGS
@given(st.integers(1, 3), st.integers(1, LONGEST_CONTEXT), st.data(), seeds)
def test_causal_attention_gives_later_keys_exactly_zero_weight(kernel, batch, seq, data, seed):
    """Rows 0..last do not change by a bit when the keys and values after `last` become huge;
    query 0 sees key 0 alone, so its output is v_0 exactly."""
    backend, heads, head_dim = kernel
    last = data.draw(st.integers(0, seq - 1), label="last")
    q, k, v = random_qkv(batch, seq, heads, head_dim, seed)
    k_late, v_late = k.copy(), v.copy()
    k_late[:, last + 1:] *= 1e3  # large scores: a leaked key would dominate its row
    v_late[:, last + 1:] = 1e30  # a weight of 1e-38 would still show
    run = compiled_attention(backend, heads, head_dim)
    got, got_late = run(q, k, v), run(q, k_late, v_late)
    np.testing.assert_array_equal(got_late[:, : last + 1], got[:, : last + 1])
    np.testing.assert_array_equal(got[:, 0], v[:, 0].reshape(batch, heads * head_dim))


# ---- the causal block ----------------------------------------------------------------------------

def text_config(**fields) -> PETextConfig:
    """A small text tower: 2 blocks of width 32, a 32-token context, a 64-id vocabulary."""
    small = dict(context_length=32, width=32, heads=2, layers=2, output_dim=24, mlp_ratio=4.0,
                 vocab_size=64)
    small.update(fields)
    return PETextConfig(**small)


@functools.cache
def compiled_block(**config_fields):
    cfg = model.text_blocks_config(text_config(**config_fields))
    block = model.ResidualAttentionBlock(cfg, "float32", causal=True)
    block.forward = functools.partial(block.forward, grid_w=None)
    return compile_component(block, {"x": tokens_spec(cfg.width)})


# (width, heads, mlp_ratio): PE's head size 16 at width 32, and a head size (12) and width (48)
# off the 16-float vector with a narrower MLP.
BLOCKS = [(32, 2, 4.0), (48, 4, 2.0)]


@pytest.mark.parametrize("structure", structures(BLOCKS))
@SETTINGS
@given(batches, st.integers(1, LONGEST_CONTEXT), seeds)
def test_text_block_with_causal_mask_matches_reference(structure, batch, seq, seed):
    width, heads, mlp_ratio = structure
    ref = reference.ResidualAttentionBlock(width, heads, int(width * mlp_ratio),
                                           use_layer_scale=False, rope=None)
    ref = randomize_(ref, seed).double()
    x = random_tokens(batch, seq, width, seed)
    run = compiled_block(width=width, heads=heads, mlp_ratio=mlp_ratio)
    with torch.no_grad():
        want = ref(torch.from_numpy(x).double(), attn_mask=reference.causal_mask(seq).double())
    assert_close(run(numpy_weights(ref), x), want.numpy())


# ---- the whole tower -----------------------------------------------------------------------------

def text_spec() -> nn.spec.Tensor:
    return nn.spec.Tensor(["batch", "seq"], "int32")


@functools.cache
def compiled_tower(backend: str, **config_fields):
    tower = model.TextTransformer(text_config(**config_fields))
    return compile_component(tower, {"text": text_spec()}, backend)


def random_ids(batch: int, seq: int, vocab_size: int, rng: np.random.Generator) -> np.ndarray:
    """Tokenizer-shaped ids: random tokens, the end-of-text id (the largest) at a random
    position of each row, zero padding after it."""
    eot = vocab_size - 1
    ids = rng.integers(1, eot, size=(batch, seq), dtype=np.int32)
    ends = rng.integers(0, seq, size=batch)
    ids[np.arange(batch), ends] = eot
    ids[np.arange(seq) > ends[:, None]] = 0
    return ids


# (backend, context_length, width, heads, layers, mlp_ratio): the T16/S16 context on the CPU;
# G14's context (72) with head size 12, and the GPU graph in its serial form, are `slow`.
TOWERS = [("cpu", 32, 32, 2, 2, 4.0), ("cpu", 72, 48, 4, 1, 2.0),
          ("gpu_emulated", 32, 32, 2, 2, 4.0)]


@pytest.mark.parametrize("structure", structures(TOWERS))
@SETTINGS
@given(batches, st.data(), seeds)
def test_text_transformer_matches_reference(structure, batch, data, seed):
    backend, context, width, heads, layers, mlp_ratio = structure
    cfg = text_config(context_length=context, width=width, heads=heads, layers=layers,
                      mlp_ratio=mlp_ratio)
    seq = data.draw(st.integers(1, context), label="seq")
    ref = randomize_(reference.TextTransformer(**dataclasses.asdict(cfg)), seed).double().eval()
    ids = random_ids(batch, seq, cfg.vocab_size, np.random.default_rng(seed))
    run = compiled_tower(backend, context_length=context, width=width, heads=heads,
                         layers=layers, mlp_ratio=mlp_ratio)
    with torch.no_grad():
        want = ref(torch.from_numpy(ids).long()).numpy()
    assert_close(run(numpy_weights(ref), ids), want, MODEL_TOLERANCE)
