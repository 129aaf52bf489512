"""Whole towers against the reference: every family at small sizes, and two real configs.

Tolerance: relative error 1e-4 for a whole model against a float64 reference (fp32 rounding
compounds over the blocks; measured errors sit near 1e-6).
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import torch
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st

from pe_port.build import cpu_target
from pe_port.config import custom_config, get_config
from pe_port.kernels.isa import runs_on, vector_isa
from pe_port.runtime import Encoder
from tests.helpers import (
    compile_tower,
    half_precision_limit,
    numpy_weights,
    random_images,
    reference_model,
    rel_error,
)

TOLERANCE = 1e-4

# Small towers shaped like each family, every optional part present in one and absent in
# another: Core (cls, attention pool, projection, ln_post), Lang / Spatial G (LayerScale, no
# pool, no ln_post; G without cls), token and average pooling, no absolute position embedding.
# Each family is one compile (minutes of a 2-core machine): five cover every option, three
# every option but token pooling (`make test`; the other two are `slow`).
FAMILIES = {
    "core": dict(),
    "lang": dict(pool_type="none", use_ln_post=False, output_dim=None, ls_init_value=0.1),
    "spatial-g": dict(pool_type="none", use_ln_post=False, output_dim=None, ls_init_value=0.1,
                      use_cls_token=False),
    "tok-pool": dict(pool_type="tok", output_dim=None, heads=4),
    "avg-pool-no-abs-posemb": dict(pool_type="avg", width=24, heads=4, use_ln_pre=False,
                                   use_cls_token=False, use_abs_posemb=False, layers=1),
}


SUITE_FAMILIES = ("core", "spatial-g", "avg-pool-no-abs-posemb")


def families() -> list:
    return [family if family in SUITE_FAMILIES else pytest.param(family, marks=pytest.mark.slow)
            for family in FAMILIES]


def every_feature_variant(layers: int) -> list[tuple[int, bool, bool]]:
    return list(itertools.product(range(-layers, layers), (False, True), (False, True)))


def suite_feature_variants(layers: int) -> list[tuple[int, bool, bool]]:
    """Four `forward_features` variants that take each option both ways (first and last block,
    counted from either end; norm on and off; cls token kept and stripped): every variant is a
    function of its own in the library, so `make test` compiles these and `slow` all of them."""
    return [(0, False, False), (-1, True, True), (layers - 1, False, True), (-layers, True, False)]


@functools.cache
def small_tower(family: str, seed: int = 0, every_variant: bool = False):
    """The reference and the TVM tower of `family`, its `forward_features` variants compiled
    into the one library that holds `forward`."""
    cfg = custom_config(**FAMILIES[family])
    ref = reference_model(cfg, seed)
    tower = Encoder("custom", cfg, cpu_target(), "float32", numpy_weights(ref))
    variants = every_feature_variant if every_variant else suite_feature_variants
    return ref, tower.prepare(variants(cfg.layers))


def reference_forward(ref, images: np.ndarray, **features) -> np.ndarray:
    x = torch.from_numpy(images).double()
    with torch.no_grad():
        if features:
            return ref.forward_features(x, **features).numpy()
        return ref(x).numpy()


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    error = rel_error(got, want)
    assert error <= TOLERANCE, f"relative error {error:.2e} > {TOLERANCE:.0e}"


@pytest.mark.parametrize("family", families())
@settings(max_examples=8, deadline=None)
@given(
    batch=st.integers(1, 3),
    grid_h=st.integers(1, 7),
    grid_w=st.integers(1, 7),
    seed=st.integers(0, 2**16),
)
def test_forward_matches_reference_for_every_family(family, batch, grid_h, grid_w, seed):
    ref, tower = small_tower(family)
    patch = tower.config.patch_size
    images = random_images(batch, grid_h * patch, grid_w * patch, seed)
    assert_close(tower(images), reference_forward(ref, images))


@pytest.mark.parametrize("family", families())
@settings(max_examples=6, deadline=None)
@given(data=st.data(), grid=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_forward_features_matches_reference_for_every_option(family, data, grid, seed):
    ref, tower = small_tower(family)
    variant = data.draw(st.sampled_from(suite_feature_variants(tower.config.layers)))
    check_forward_features(ref, tower, variant, grid, seed)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
@settings(max_examples=16, deadline=None)
@given(data=st.data(), grid=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_every_forward_features_variant_matches_reference(family, data, grid, seed):
    ref, tower = small_tower(family, every_variant=True)
    variant = data.draw(st.sampled_from(every_feature_variant(tower.config.layers)))
    check_forward_features(ref, tower, variant, grid, seed)


def check_forward_features(ref, tower, variant, grid: int, seed: int) -> None:
    options = dict(zip(("layer_idx", "norm", "strip_cls_token"), variant, strict=True))
    images = random_images(2, grid * 8, 32, seed)
    got = tower.forward_features(images, **options)
    assert_close(got, reference_forward(ref, images, **options))


def test_every_parameter_changes_the_output():
    """The parity tests can fail: perturbing any single weight moves the output far past 1e-4."""
    ref, tower = small_tower("core")
    images = random_images(2, 32, 40, seed=7)
    baseline = tower(images)
    weights = numpy_weights(ref)
    for name in weights:
        perturbed = dict(weights)
        perturbed[name] = weights[name] + 0.5 * np.sign(weights[name] + 1e-3)
        # Same config, target and variants: the library comes from the compile cache.
        moved = Encoder("custom", tower.config, tower.target, "float32", perturbed).prepare(
            suite_feature_variants(tower.config.layers))(images)
        assert rel_error(moved, baseline) > 100 * TOLERANCE, f"{name} has no effect"


@functools.cache
def real_tower(name: str):
    cfg = get_config(name)
    ref = reference_model(cfg, seed=1)
    return ref, Encoder("custom", cfg, cpu_target(), "float32", numpy_weights(ref))


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, height, width",
    [
        ("PE-Core-T16-384", 384, 384),
        ("PE-Core-T16-384", 224, 320),
        ("PE-Spatial-T16-512", 512, 512),
        ("PE-Spatial-T16-512", 256, 192),
    ],
)
@pytest.mark.parametrize("batch", [1, 3])
def test_official_config_matches_reference(name, height, width, batch):
    ref, tower = real_tower(name)
    images = random_images(batch, height, width, seed=batch)
    assert_close(tower(images), reference_forward(ref, images))


@functools.cache
def generic_tower():
    """The Core family built with the generic backend (plain Relax ops): what targets other
    than the CPU and the GPU get. The GPU graphs are checked in test_gpu_kernels.py."""
    cfg = custom_config(**FAMILIES["core"])
    ref = reference_model(cfg, seed=2)
    run, weights = compile_tower(cfg, "float32", "generic"), numpy_weights(ref)
    return ref, lambda images: run(weights, images)


@pytest.mark.slow  # a compile of its own; the GPU graphs (test_gpu_kernels.py) share its ops
@settings(max_examples=5, deadline=None)
@given(batch=st.integers(1, 2), grid_h=st.integers(1, 5), grid_w=st.integers(1, 5),
       seed=st.integers(0, 2**16))
def test_generic_graph_matches_reference(batch, grid_h, grid_w, seed):
    ref, run = generic_tower()
    images = random_images(batch, grid_h * 8, grid_w * 8, seed)
    assert_close(run(images), reference_forward(ref, images))


# One LLVM CPU per vector ISA the CPU kernels are tiled for (`pe_port.kernels.isa`), each ISA
# a superset of the ones before it.
X86_ISAS = {"sse2": "x86-64", "avx2": "haswell", "avx512": "skylake-avx512"}


def isa_target(mcpu: str) -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu})


def runnable_here(isa: str) -> str | None:
    """Why the `isa` build cannot or need not run on this CPU; None when it should."""
    host = cpu_target()
    if host.attrs["mtriple"] != "x86_64-linux-gnu":
        return "the x86 ISAs run on an x86-64 CPU only"
    built, own = vector_isa(isa_target(X86_ISAS[isa])), vector_isa(host)
    if own == built:
        return f"{isa} is this CPU's own ISA: every other parity test builds for it"
    return None if runs_on(built, own) else f"this CPU's ISA is {own.name}"


@pytest.mark.parametrize("isa", sorted(X86_ISAS))
@settings(max_examples=4, deadline=None)
@given(batch=st.integers(1, 2), grid_h=st.integers(1, 5), grid_w=st.integers(1, 5),
       seed=st.integers(0, 2**16))
def test_cpu_kernels_of_every_x86_isa_match_reference(isa, batch, grid_h, grid_w, seed):
    """The CPU kernels tiled for each x86 vector ISA (baseline x86-64, AVX2, AVX-512), built
    for a CPU of that ISA and run wherever this CPU can execute them."""
    reason = runnable_here(isa)
    if reason:
        pytest.skip(reason)
    ref, tower = isa_tower(X86_ISAS[isa])
    assert vector_isa(tower.target).name == isa
    patch = tower.config.patch_size
    images = random_images(batch, grid_h * patch, grid_w * patch, seed)
    assert_close(tower(images), reference_forward(ref, images))


@functools.cache
def isa_tower(mcpu: str):
    cfg = custom_config(**FAMILIES["core"])
    ref = reference_model(cfg, seed=5)
    return ref, Encoder("custom", cfg, isa_target(mcpu), "float32", numpy_weights(ref))


@pytest.mark.slow  # a compile per dtype
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_on_the_cpu_matches_reference(dtype):
    """fp16 / bf16 on this CPU (the generic graph: fp32 accumulation and LayerNorm statistics).
    Tolerance: `half_precision_limit`, as for the GPU graph."""
    cfg = custom_config(**FAMILIES["core"])
    ref = reference_model(cfg, seed=4)
    tower = Encoder("custom", cfg, cpu_target(), dtype, numpy_weights(ref))
    images = random_images(2, 32, 24, seed=5)
    want = reference_forward(ref, images)
    torch_dtype = getattr(torch, dtype)
    with torch.no_grad():
        half = reference_model(cfg, seed=4).to(torch_dtype)
        own = half(torch.from_numpy(images).to(torch_dtype)).float().numpy()
    assert rel_error(tower(images), want) <= half_precision_limit(dtype, rel_error(own, want))
