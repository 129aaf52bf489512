"""CUDA: the tower cross-compiles for sm_80 and sm_90 here; parity runs only where a GPU is.

Tolerance on the GPU: fp32, relative error 1e-4 against the float64 reference (as on the CPU).
"""

from __future__ import annotations

import shutil

import pytest
import tvm

from pe_port.compile import build, cuda_target, export_tower
from pe_port.config import custom_config

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_tower_cross_compiles_and_exports_for_cuda(arch, tmp_path):
    mod, _ = export_tower(custom_config(), "float32")
    library = tmp_path / f"tower_{arch}.so"
    build(mod, cuda_target(arch)).export_library(str(library))
    assert library.stat().st_size > 0


@pytest.mark.gpu
@pytest.mark.skipif(not tvm.cuda(0).exist, reason="no CUDA GPU on this machine")
def test_tower_matches_reference_on_the_gpu():
    from pe_port.runtime import CompiledTower
    from tests.helpers import numpy_weights, random_images, reference_model, rel_error

    cfg = custom_config()
    ref = reference_model(cfg)
    tower = CompiledTower(cfg, cuda_target(), "float32", numpy_weights(ref))
    images = random_images(2, 32, 48, seed=0)
    import torch

    with torch.no_grad():
        want = ref(torch.from_numpy(images).double()).numpy()
    assert rel_error(tower(images), want) <= 1e-4
