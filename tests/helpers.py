"""Shared test tools: random weights that exercise every parameter, and the error measure."""

from __future__ import annotations

import numpy as np
import torch

import reference
from pe_port.config import PEConfig


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every parameter with random values: no zero bias, no constant gamma or norm weight.

    Matrices get fan-in scaling so activations stay O(1) through deep stacks; vectors (biases,
    LayerNorm affine, LayerScale gamma) get values far from any init constant, so a dropped or
    misplaced vector changes the output visibly.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float64)
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight",
                              "layernorm.weight")):
                value = 1.0 + 0.3 * noise
            elif name.endswith("gamma"):
                value = 0.5 + 0.5 * noise
            elif param.ndim >= 2 and "embedding" not in name and name != "attn_pool.probe":
                fan_in = param[0].numel()
                value = noise * fan_in**-0.5
            else:
                value = 0.5 * noise
            # Round through float32 so the TVM fp32 weights equal the float64 reference's.
            param.copy_(value.float().to(param.dtype))
    return module


def reference_model(config: PEConfig, seed: int = 0) -> reference.VisionTransformer:
    """The reference tower of `config` with random weights, in float64 for use as an oracle."""
    return randomize_(reference.VisionTransformer(**config.as_kwargs()), seed).double().eval()


def numpy_weights(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().float().numpy() for k, v in module.state_dict().items()}


def random_images(batch: int, height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, size=(batch, 3, height, width)).astype(np.float32)


def rel_error(actual: np.ndarray, expected) -> float:
    """||actual - expected|| / ||expected||, computed in float64."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def compile_component(module, inputs: dict):
    """Compile one Relax nn module's `forward` with the user pipeline for this CPU.

    Returns `run(weights, *args)`: weights by the module's own parameter names, tensors as numpy
    arrays and symbolic ints as Python ints.
    """
    import tvm
    from tvm import relax

    from pe_port.compile import build, cpu_target

    mod, params = module.export_tvm({"forward": inputs})
    vm = relax.VirtualMachine(build(mod, cpu_target()), tvm.cpu())
    names = [name for name, _ in params]

    def to_tvm(value):
        if isinstance(value, int):
            return tvm.runtime.ShapeTuple([value])
        return tvm.runtime.tensor(np.ascontiguousarray(value, dtype=np.float32))

    def run(weights: dict[str, np.ndarray], *args):
        out = vm["forward"](*[to_tvm(a) for a in args], *[to_tvm(weights[n]) for n in names])
        if isinstance(out, tvm.runtime.Tensor):
            return out.numpy()
        return tuple(o.numpy() for o in out)

    return run
