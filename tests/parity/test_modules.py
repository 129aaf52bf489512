"""Each Relax module against its reference twin, with random weights and drawn shapes.

Tolerance: relative error 1e-5 against a float64 reference with the same (fp32-rounded) weights.
fp32 keeps ~7 significant digits; accumulations over a few hundred terms and a softmax lose at
most a few more bits, so a correct module sits near 1e-7 and a wrong one far above 1e-3.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tvm.relax.frontend import nn

import reference
from pe_port import model
from pe_port.config import custom_config
from tests.helpers import compile_component, numpy_weights, randomize_, rel_error

TOLERANCE = 1e-5
SETTINGS = settings(max_examples=10, deadline=None)

# Structural choices force a compile each (tens of seconds of a 2-core machine), so each test
# runs on two or three fixed structures that between them take every option, and draws batch,
# sequence, grid and values freely. `make test` runs the first structure of each (the one with
# the most options on); the others are `slow` (`make test-all`). Widths 24 and 48 are not
# multiples of the 16-float vector: the kernels' remainder paths run too.
batches = st.integers(1, 3)
grids = st.integers(1, 6)
seeds = st.integers(0, 2**16)


def structures(choices: list) -> list:
    return [choices[0]] + [pytest.param(c, marks=pytest.mark.slow) for c in choices[1:]]


def tokens_spec(width: int) -> nn.spec.Tensor:
    return nn.spec.Tensor(["batch", "seq", width], "float32")


def random_tokens(batch: int, seq: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, seq, width)).astype(np.float32)


def run_reference(module: torch.nn.Module, *args) -> np.ndarray:
    with torch.no_grad():
        return module.double()(*[torch.from_numpy(a).double() for a in args]).numpy()


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    error = rel_error(got, want)
    assert error <= TOLERANCE, f"relative error {error:.2e} > {TOLERANCE:.0e}"


@functools.cache
def compiled(kind: str, layer_idx: int = -1, **config_fields):
    cfg = custom_config(**config_fields)
    width = cfg.width
    if kind == "LayerScale":
        return compile_component(model.LayerScale(width, "float32"), {"x": tokens_spec(width)})
    if kind == "AttentionPooling":
        module = model.AttentionPooling(width, cfg.attn_pooler_heads, "float32")
        return compile_component(module, {"x": tokens_spec(width)})
    spec = {"x": tokens_spec(width), "grid_w": int}
    if kind == "SelfAttention":
        return compile_component(model.SelfAttention(cfg, "float32"), spec)
    if kind == "ResidualAttentionBlock":
        return compile_component(model.ResidualAttentionBlock(cfg, "float32"), spec)
    if kind == "Transformer":
        transformer = model.Transformer(cfg, "float32")
        transformer.forward = functools.partial(transformer.forward, layer_idx=layer_idx)
        return compile_component(transformer, spec)
    raise ValueError(kind)


def reference_rope(head_dim: int, cls: bool, grid_h: int, grid_w: int) -> reference.Rope2D:
    rope = reference.Rope2D(head_dim, cls)
    rope.update_grid(grid_h, grid_w)
    return rope


@pytest.mark.parametrize("width", structures([24, 64]))
@SETTINGS
@given(batches, st.integers(1, 20), seeds)
def test_layer_scale_matches_reference(width, batch, seq, seed):
    ref = randomize_(reference.LayerScale(width), seed)
    x = random_tokens(batch, seq, width, seed)
    got = compiled("LayerScale", width=width, heads=1)(numpy_weights(ref), x)
    assert_close(got, run_reference(ref, x))


@pytest.mark.parametrize("width_heads", structures([(24, 4), (64, 8)]))
@SETTINGS
@given(batches, st.integers(1, 40), seeds)
def test_attention_pooling_matches_reference(width_heads, batch, seq, seed):
    width, pool_heads = width_heads
    ref = randomize_(reference.AttentionPooling(width, pool_heads), seed)
    x = random_tokens(batch, seq, width, seed)
    run = compiled("AttentionPooling", width=width, heads=1, attn_pooler_heads=pool_heads)
    assert_close(run(numpy_weights(ref), x), run_reference(ref, x))


# (width, heads, cls, rope)
ATTENTION = [(32, 2, True, True), (48, 4, False, True), (64, 1, True, False)]


@pytest.mark.parametrize("structure", structures(ATTENTION))
@SETTINGS
@given(batches, grids, grids, seeds)
def test_self_attention_matches_reference(structure, batch, gh, gw, seed):
    width, heads, cls, rope = structure
    ref_rope = reference_rope(width // heads, cls, gh, gw) if rope else None
    ref = randomize_(reference.SelfAttention(width, heads, rope=ref_rope), seed)
    x = random_tokens(batch, gh * gw + int(cls), width, seed)
    run = compiled("SelfAttention", width=width, heads=heads, use_cls_token=cls,
                   use_rope2d=rope)
    assert_close(run(numpy_weights(ref), x, gw), run_reference(ref, x))


# (width, heads, cls, LayerScale)
BLOCKS = [(32, 2, True, True), (24, 4, False, False)]


@pytest.mark.parametrize("structure", structures(BLOCKS))
@SETTINGS
@given(batches, grids, grids, seeds)
def test_residual_attention_block_matches_reference(structure, batch, gh, gw, seed):
    width, heads, cls, layer_scale = structure
    rope = reference_rope(width // heads, cls, gh, gw)
    ref = reference.ResidualAttentionBlock(width, heads, 3 * width, layer_scale, rope)
    ref = randomize_(ref, seed)
    x = random_tokens(batch, gh * gw + int(cls), width, seed)
    run = compiled("ResidualAttentionBlock", width=width, heads=heads, mlp_ratio=3.0,
                   use_cls_token=cls, ls_init_value=0.1 if layer_scale else None)
    assert_close(run(numpy_weights(ref), x, gw), run_reference(ref, x))


# (layers, layer_idx, LayerScale): the last block, an earlier one by negative index, by
# positive index, and a single block.
TRANSFORMERS = [(3, -2, True), (3, 0, False), (1, -1, True)]


@pytest.mark.parametrize("structure", structures(TRANSFORMERS))
@SETTINGS
@given(batches, grids, grids, seeds)
def test_transformer_stops_after_layer_idx_like_reference(structure, batch, gh, gw, seed):
    layers, layer_idx, layer_scale = structure
    width, heads = 32, 2
    rope = reference_rope(width // heads, True, gh, gw)
    ref = reference.Transformer(
        layers, lambda: reference.ResidualAttentionBlock(width, heads, 64, layer_scale, rope)
    )
    ref = randomize_(ref, seed)
    x = random_tokens(batch, gh * gw + 1, width, seed)
    run = compiled("Transformer", width=width, heads=heads, layers=layers, mlp_ratio=2.0,
                   ls_init_value=0.1 if layer_scale else None, layer_idx=layer_idx)
    with torch.no_grad():
        want = ref.double()(torch.from_numpy(x).double(), layer_idx=layer_idx).numpy()
    assert_close(run(numpy_weights(ref), x, gw), want)
