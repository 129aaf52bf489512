"""CUDA: the tower cross-compiles for sm_80 and sm_90 here; parity runs only where a GPU is.

Without a GPU these tests check what the CUDA build contains: the fp16 and bf16 matmuls on the
tensor cores (WMMA fragments of that element type), the flash attention kernel, and that the
attention kernel fits in registers (ptxas reports no spills). Its arithmetic is checked on the
CPU in test_gpu_kernels.py.

Tolerance on the GPU: fp32, relative error 1e-4 against the float64 reference (as on the CPU);
fp16 and bf16 as in test_gpu_kernels.py (`tests.helpers.half_precision_limit`).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess

import pytest
import tvm

from bench.backends import UnfusedAttentionGpuBackend
from pe_port.build import build, build_text_tower, build_tower, cuda_target, export_tower
from pe_port.config import custom_config, custom_text_config
from pe_port.kernels.attention import make_flash_attention_kernel
from tests.helpers import compile_kernel

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
has_gpu = tvm.cuda(0).exist
# Wide enough that dlight tensorizes the matmuls (it leaves dimensions of 64 or less alone).
TENSOR_CORE_CONFIG = custom_config(width=128, heads=2, output_dim=128)
WMMA_TYPES = {"float16": "half", "bfloat16": "nv_bfloat16"}


def cuda_source(executable) -> str:
    """The CUDA C++ TVM generated for every kernel of a built module."""
    def modules(module):
        yield module
        for imported in module.imports:
            yield from modules(imported)

    return "".join(m.inspect_source("cuda") for m in modules(executable.mod) if m.kind == "cuda")


@functools.cache
def built_tower(dtype: str, arch: str):
    return build_tower(TENSOR_CORE_CONFIG, dtype, cuda_target(arch))


# A CUDA build of even this small tower is minutes of a 2-core machine (nvcc on every kernel),
# and the first half-precision one also parses all of TVM's CUDA tensor intrinsics (minutes
# more, once per process): the tower builds are `slow` (`make test-all`); `make test` checks
# the flash kernel with nvcc (below), and the GPU graph on this CPU (test_gpu_kernels.py).
slow = pytest.mark.slow
ARCH = {"float32": "sm_80", "float16": "sm_90", "bfloat16": "sm_90"}
BUILDS = [pytest.param(dtype, arch, marks=slow) for dtype, arch in ARCH.items()]


@needs_nvcc
@pytest.mark.parametrize("dtype, arch", BUILDS)
def test_tower_cross_compiles_and_exports_for_cuda(dtype, arch, tmp_path):
    library = tmp_path / f"tower_{dtype}_{arch}.so"
    built_tower(dtype, arch).export_library(str(library))
    assert library.stat().st_size > 0
    assert "flash_attention" in cuda_source(built_tower(dtype, arch))


@needs_nvcc
def test_text_tower_cross_compiles_for_cuda_with_causal_flash_attention(tmp_path):
    """The PE-Core text tower builds for CUDA like the vision tower, its attention the causal
    flash kernel (whose arithmetic test_text_modules.py checks, emulated). fp32 only: seconds
    here, where a half-precision build parses TVM's tensor intrinsics for minutes."""
    config = custom_text_config(context_length=32, width=128, heads=2, output_dim=64,
                                vocab_size=512)
    executable = build_text_tower(config, "float32", cuda_target("sm_90"))
    library = tmp_path / "text_tower.so"
    executable.export_library(str(library))
    assert library.stat().st_size > 0
    kernels = set(re.findall(r"void __launch_bounds__\(\d+\) (\w+)\(", cuda_source(executable)))
    assert "causal_flash_attention_kernel" in kernels
    assert "flash_attention_kernel" not in kernels, "a text block attends without its mask"


@needs_nvcc
@slow
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_matmuls_run_on_tensor_cores(dtype):
    source = cuda_source(built_tower(dtype, ARCH[dtype]))
    fragment = f"wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, {WMMA_TYPES[dtype]}"
    # Every matmul of a block (qkv, out, fc, proj) and of the pool: one kernel each at least.
    assert source.count(fragment) >= 4
    assert "wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>" in source
    # Every Linear is a `gpu_dense` kernel (weights read as stored, docs/porting.md), each one
    # on the tensor cores: none fell through to the plain-core rules.
    definitions = [body for body in source.split('extern "C" __global__')
                   if body.split("\n")[0].rstrip().endswith("{")]  # not the declarations
    dense = [body for body in definitions if re.search(r"\bgpu_dense\d*_kernel\(", body)]
    assert len(dense) >= 4 and all("mma_sync" in body for body in dense)


@needs_nvcc
@slow
@pytest.mark.xfail(strict=True, raises=RuntimeError, reason=(
    "no dlight rule schedules the [b, h, s, s] softmax-and-cast kernel: GeneralReduction and "
    "Fallback both stop at 'The reduction block vars are not used to index the output "
    "buffers' (docs/porting.md); strict, so a TVM that fixes it turns this red"))
def test_unfused_attention_variant_cross_compiles():
    """`gpu_unfused` (the attention as two matmuls around a softmax), meant to be timed
    against the flash kernel by scripts/gpu_bench.py --attention; fails today (see the xfail)."""
    target = cuda_target("sm_80")
    mod, _ = export_tower(TENSOR_CORE_CONFIG, "float16", (), UnfusedAttentionGpuBackend())
    source = cuda_source(build(mod, target))
    assert "flash_attention" not in source and "softmax" in source


@needs_nvcc
@pytest.mark.parametrize("dtype", [pytest.param("float32", marks=slow), "float16",
                                   pytest.param("bfloat16", marks=slow)])
def test_flash_attention_fits_in_registers(dtype, tmp_path):
    """PE's head size (64): ptxas must keep the query row and accumulator in registers."""
    kernel = make_flash_attention_kernel(12, 64, 0.125, dtype)
    lib = compile_kernel(kernel, cuda_target("sm_90"))
    source = tmp_path / "attention.cu"
    source.write_text(cuda_source(lib))
    report = subprocess.run(
        ["nvcc", "-arch=sm_90", "-cubin", "-Xptxas", "-v", "-o", str(tmp_path / "a.cubin"),
         str(source)], capture_output=True, text=True, check=True).stderr
    assert re.search(r"\b0 bytes spill stores, 0 bytes spill loads", report), report


@pytest.mark.gpu
@pytest.mark.skipif(not has_gpu, reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_tower_matches_reference_on_the_gpu(dtype):
    import torch

    from pe_port.runtime import Encoder
    from tests.helpers import (
        half_precision_limit,
        numpy_weights,
        random_images,
        reference_model,
        rel_error,
    )

    cfg = custom_config()
    ref = reference_model(cfg)
    tower = Encoder("custom", cfg, cuda_target(), dtype, numpy_weights(ref))
    images = random_images(2, 32, 48, seed=0)
    with torch.no_grad():
        want = ref(torch.from_numpy(images).double()).numpy()
        if dtype != "float32":
            torch_dtype = getattr(torch, dtype)
            half = reference_model(cfg).to(torch_dtype)
            own = rel_error(half(torch.from_numpy(images).to(torch_dtype)).float().numpy(), want)
            limit = half_precision_limit(dtype, own)
        else:
            limit = 1e-4
    assert rel_error(tower(images), want) <= limit
