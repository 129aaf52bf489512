"""Shared test tools: random weights that exercise every parameter, and the error measure."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

import reference
from bench.measure import relative_error
from pe_port.config import PEConfig
from reference.random_weights import randomize_


def reference_model(config: PEConfig, seed: int = 0) -> reference.VisionTransformer:
    """The reference tower of `config` with random weights, in float64 for use as an oracle."""
    return randomize_(reference.VisionTransformer(**config.as_kwargs()), seed).double().eval()


def numpy_weights(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().float().numpy() for k, v in module.state_dict().items()}


def random_images(batch: int, height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, size=(batch, 3, height, width)).astype(np.float32)


def rel_error(actual: np.ndarray, expected) -> float:
    """||actual - expected|| / ||expected||, computed in float64; the shapes must agree."""
    expected = np.asarray(expected)
    assert np.shape(actual) == expected.shape, f"shape {np.shape(actual)} != {expected.shape}"
    return relative_error(actual, expected)


def compile_kernel(kernel, target=None):
    """One TIR kernel built alone as `main` (for `target`, this CPU by default); the library."""
    import tvm

    from pe_port.build import cpu_target

    return tvm.compile(tvm.IRModule({"main": kernel.with_attr("global_symbol", "main")}),
                       target=target or cpu_target())


def dense_reference(x, w, bias, activation, res, gamma):
    """What the dense kernels compute, in the inputs' (float64) precision: `x @ w.T + bias`,
    then exact GELU or the (LayerScale-scaled) residual add."""
    y = x @ w.T + bias
    if activation == "gelu":
        y = y * 0.5 * (1 + np.vectorize(math.erf)(y / math.sqrt(2)))
    if gamma is not None:
        y = gamma * y
    return y if res is None else res + y


def backend_named(name: str):
    """"cpu" (what users get on this CPU) or a test variant of `bench.backends.VARIANTS`."""
    from bench.backends import VARIANTS
    from pe_port.backends import for_target
    from pe_port.build import cpu_target

    return for_target(cpu_target()) if name == "cpu" else VARIANTS[name]


def compile_component(module, inputs: dict, backend: str = "cpu"):
    """Compile one Relax nn module's `forward` as users get it on this CPU.

    The graph is built with the `backend` kernels (the hand-written CPU ones by default) and the
    weight packing lifted into `forward_transform_params`, exactly as
    `pe_port.build.export_tower` does. Returns `run(weights, *args)`: weights by the module's
    own parameter names, tensors as numpy arrays (float ones as float32, integer ones as they
    are) and symbolic ints as Python ints.
    """
    import tvm
    from tvm import relax

    from pe_port import ops
    from pe_port.artifact import transform_function_name
    from pe_port.build import build, cpu_target, lift_weight_transforms

    with ops.use_backend(backend_named(backend)):
        mod, params = module.export_tvm({"forward": inputs})
    mod = lift_weight_transforms(mod)
    vm = relax.VirtualMachine(build(mod, cpu_target()), tvm.cpu())
    names = [name for name, _ in params]

    def to_tvm(value):
        if isinstance(value, int):
            return tvm.runtime.ShapeTuple([value])
        if np.issubdtype(np.asarray(value).dtype, np.integer):  # token ids keep their type
            return tvm.runtime.tensor(np.ascontiguousarray(value))
        return tvm.runtime.tensor(np.ascontiguousarray(value, dtype=np.float32))

    def run(weights: dict[str, np.ndarray], *args):
        packed = list(vm[transform_function_name("forward")]([to_tvm(weights[n]) for n in names]))
        out = vm["forward"](*[to_tvm(a) for a in args], *packed)
        if isinstance(out, tvm.runtime.Tensor):
            return out.numpy()
        return tuple(o.numpy() for o in out)

    return run


@functools.cache
def compile_tower(config: PEConfig, dtype: str, backend: str):
    """A whole tower's `forward` built with the `backend` kernels (`backend_named`) for this
    CPU. Returns `run(weights, images)`: float32 numpy in and out, `dtype` inside."""
    import tvm
    from tvm import relax

    from pe_port.artifact import transform_function_name
    from pe_port.build import build, cpu_target, export_tower
    from pe_port.runtime import to_numpy_dtype

    mod, specs = export_tower(config, dtype, (), backend_named(backend))
    vm = relax.VirtualMachine(build(mod, cpu_target()), tvm.cpu())
    np_dtype = to_numpy_dtype(dtype)

    def run(weights: dict[str, np.ndarray], images: np.ndarray) -> np.ndarray:
        params = [tvm.runtime.tensor(weights[name].astype(np_dtype)) for name, _ in specs]
        packed = list(vm[transform_function_name("forward")](params))
        out = vm["forward"](tvm.runtime.tensor(images.astype(np_dtype)), *packed)
        return out.numpy().astype(np.float32)

    return run


# Unit roundoff of each dtype: the relative error of rounding one value to it.
UNIT_ROUNDOFF = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}


def half_precision_limit(dtype: str, torch_error: float) -> float:
    """The error allowed to a whole tower in fp16/bf16: twice PyTorch's own error in that dtype
    on the same weights and images (every stored activation is rounded in both), but never
    less than two units of roundoff (rounding the output alone costs one; on a small tower
    PyTorch's error can fall below that by chance)."""
    return max(2 * torch_error, 2 * UNIT_ROUNDOFF[dtype])
