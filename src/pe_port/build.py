"""From the Relax model to an executable: targets, the exported functions, and `build`.

`export_tower` turns the Relax `nn.Module` (`model.py`) into an IRModule with one function per
exported variant and the weight packing lifted out; `build` compiles it with the pipeline of the
target's `Backend` (`backends.py`). Nothing here needs the target's device: CUDA libraries are
built on machines without a GPU.
"""

from __future__ import annotations

import functools
import platform
import shutil
from collections.abc import Callable, Sequence

import tvm
from tvm import relax
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn.spec import MethodSpec, ModuleSpec
from tvm.support.cc import cross_compiler
from tvm.target import codegen

from pe_port import ops
from pe_port.artifact import FeatureVariant
from pe_port.backends import Backend, for_target
from pe_port.config import PEConfig, PETextConfig
from pe_port.errors import TargetError
from pe_port.kernels.tvmscript import quick_frame_inspection
from pe_port.model import TextTransformer, VisionTransformer

# Compute capability the CUDA build targets when neither told nor on a GPU machine (H100).
DEFAULT_CUDA_ARCH = "sm_90"


# ---- targets ----------------------------------------------------------------------------------

def cpu_target(num_cores: int | None = None) -> tvm.target.Target:
    """An LLVM target for the CPU this process runs on, its features detected at run time.

    Falls back to a generic CPU of the host architecture when LLVM does not know the name.
    """
    mcpu = codegen.llvm_get_system_cpu()
    target: dict = {"kind": "llvm", "mtriple": host_triple()}
    if mcpu and codegen.llvm_is_valid_cpu(mcpu, target["mtriple"]):
        target["mcpu"] = mcpu
    if num_cores is not None:
        target["num-cores"] = num_cores
    return tvm.target.Target(target)


def host_triple() -> str:
    machine = platform.machine()
    return {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(
        machine, f"{machine}-linux-gnu"
    )


def cuda_target(arch: str | None = None) -> tvm.target.Target:
    """A CUDA target for `arch` (e.g. "sm_80"), with the host CPU as its host.

    Without `arch`: the compute capability of this machine's GPU, or `DEFAULT_CUDA_ARCH` when
    it has none (cross-compiling).
    """
    arch = arch or local_cuda_arch() or DEFAULT_CUDA_ARCH
    if not (arch.startswith("sm_") and arch[3:].isdigit()):
        raise TargetError(f"CUDA arch {arch!r} is not of the form sm_XY (e.g. sm_87, sm_90)")
    return tvm.target.Target({"kind": "cuda", "arch": arch},
                             host={"kind": "llvm", "mtriple": host_triple()})


# `target="aarch64"`: 64-bit Arm Linux boards and servers with NEON. Cortex-A76 (Raspberry Pi 5,
# RK3588 boards) is the same Armv8.2 core as Neoverse N1 (Graviton 2, Ampere Altra); an older
# core (Cortex-A72: Raspberry Pi 4) takes a target dict with its own `mcpu`.
AARCH64_TARGET = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"}
# The linker of a library for another CPU architecture (Debian's g++-<triple> packages).
CROSS_LINKERS = {"aarch64": "aarch64-linux-gnu-g++"}


def target_arch(target: tvm.target.Target) -> str:
    """The CPU architecture an LLVM target compiles for ("x86_64", "aarch64"), from `mtriple`;
    the host's when it names none."""
    triple = str(target.attrs.get("mtriple", "")) or host_triple()
    return triple.split("-", 1)[0]


def runs_here(target: tvm.target.Target) -> bool:
    """Whether this machine can load a library built for `target`: a CPU target of its own
    architecture, or any GPU target (whose host code is this machine's)."""
    return target.kind.name != "llvm" or target_arch(target) == platform.machine()


def export_options(target: tvm.target.Target) -> dict:
    """The arguments of `export_library` for `target`: none for this machine; for another CPU
    architecture, its cross linker (which must be on the PATH)."""
    if runs_here(target):
        return {}
    arch = target_arch(target)
    linker = CROSS_LINKERS.get(arch)
    if linker is None:
        raise TargetError(f"no cross linker known for {arch} targets; "
                          f"known: {', '.join(sorted(CROSS_LINKERS))}")
    if shutil.which(linker) is None:
        raise TargetError(f"a library for {arch} is linked with {linker}, which is not on the "
                          f"PATH (Debian/Ubuntu: `make cross-deps` or "
                          f"`apt-get install g++-{linker.removesuffix('-g++')}`)")
    return {"fcompile": cross_compiler(linker)}


def local_cuda_arch() -> str | None:
    """"sm_XY" of GPU 0, or None without a GPU."""
    device = tvm.cuda(0)
    return "sm_" + device.compute_version.replace(".", "") if device.exist else None


def resolve_target(target: str | dict | tvm.target.Target,
                   arch: str | None = None) -> tvm.target.Target:
    """"cpu", "aarch64" (`AARCH64_TARGET`, cross-compiled), "cuda" (`arch` picks the GPU
    generation), a TVM target dict, or a Target."""
    if isinstance(target, tvm.target.Target):
        return target
    if arch is not None and target != "cuda":
        raise TargetError(f"arch {arch!r} is for target 'cuda', not {target!r}")
    if target == "cpu":
        return cpu_target()
    if target == "aarch64":
        return tvm.target.Target(AARCH64_TARGET)
    if target == "cuda":
        return cuda_target(arch)
    if isinstance(target, dict):
        try:
            return tvm.target.Target(target)
        except Exception as err:  # TVM raises several error types for a bad dict
            raise TargetError(f"invalid TVM target {target!r}: {err}") from None
    raise TargetError(f"unknown target {target!r}; use 'cpu', 'aarch64', 'cuda' or a TVM "
                      "target dict")


def is_gpu(target: tvm.target.Target) -> bool:
    return "gpu" in target.keys


# ---- the graph --------------------------------------------------------------------------------

def image_spec(dtype: str) -> nn.spec.Tensor:
    """Pixels `[batch, 3, height, width]`: batch and image size are symbolic."""
    return nn.spec.Tensor(["batch", 3, "height", "width"], dtype)


def text_spec() -> nn.spec.Tensor:
    """Token ids `[batch, seq]`, int32: batch and length symbolic (length <= context)."""
    return nn.spec.Tensor(["batch", "seq"], "int32")


def lift_weight_transforms(mod: tvm.IRModule) -> tvm.IRModule:
    """Move weight-only work (packing for the CPU matmuls, transposes) out of every function
    into its own `transform_function_name(function)`, run once when the weights are loaded.

    One transform per function, not one shared by all: a shared one holds only what every
    function does to the weights, so the attention pool's packing (used by `forward`, not by
    `forward_features`) stayed in `forward` and ran at every call (5 ms of 95 on B16).
    """
    return relax.transform.LiftTransformParams(shared_transform=False)(mod)


ParamSpecs = list[tuple[str, tuple[int, ...]]]


def param_specs(config: PEConfig, dtype: str = "float32") -> ParamSpecs:
    """The tower's parameters (official names) and shapes, in the order the compiled functions
    take them; read off the `nn.Module` without building the graph."""
    model = VisionTransformer(config, dtype)
    return [(name, tuple(int(d) for d in param.shape))
            for name, param in model.named_parameters()]


@functools.lru_cache(maxsize=32)  # deterministic, and an IRModule is immutable
def export_tower(
    config: PEConfig,
    dtype: str,
    variants: tuple[FeatureVariant, ...] = (),
    backend: Backend | None = None,
) -> tuple[tvm.IRModule, ParamSpecs]:
    """The Relax IRModule of the tower: `forward`, `forward_features` and each extra variant.

    Built with `backend`'s ops (default: generic Relax ops). Returns the module and the
    parameters' names and shapes, in the order the functions take them after the image.
    """
    model = VisionTransformer(config, dtype)
    methods: dict[str, Callable] = {
        "forward": model.forward,
        "forward_features": model.forward_features,
    }
    for variant in variants:
        methods[variant.function_name(config.layers)] = functools.partial(
            model.forward_features, norm=variant.norm, layer_idx=variant.layer_idx,
            strip_cls_token=variant.strip_cls_token)
    specs = [MethodSpec.from_raw({"x": image_spec(dtype)}, method) for method in methods.values()]
    with ops.use_backend(backend or Backend()), quick_frame_inspection():
        mod, params = model.export_tvm(ModuleSpec(model, list(methods), specs))
    mod = lift_weight_transforms(mod)
    return mod, [(name, tuple(int(d) for d in param.shape)) for name, param in params]


def text_param_specs(config: PETextConfig, dtype: str = "float32") -> ParamSpecs:
    """The text tower's parameters (official names) and shapes, in the order `forward` takes
    them; read off the `nn.Module` without building the graph."""
    model = TextTransformer(config, dtype)
    return [(name, tuple(int(d) for d in param.shape))
            for name, param in model.named_parameters()]


@functools.lru_cache(maxsize=8)
def export_text_tower(config: PETextConfig, dtype: str,
                      backend: Backend | None = None) -> tuple[tvm.IRModule, ParamSpecs]:
    """The Relax IRModule of the text tower: `forward` (ids to the projected embedding)."""
    model = TextTransformer(config, dtype)
    spec = MethodSpec.from_raw({"text": text_spec()}, model.forward)
    with ops.use_backend(backend or Backend()), quick_frame_inspection():
        mod, params = model.export_tvm(ModuleSpec(model, ["forward"], [spec]))
    mod = lift_weight_transforms(mod)
    return mod, [(name, tuple(int(d) for d in param.shape)) for name, param in params]


def build(mod: tvm.IRModule, target: tvm.target.Target) -> relax.VMExecutable:
    """Compile a Relax module with the pipeline of the target's backend."""
    # Our kernels parse under it in their `make_*`; here for dlight's GPU rules, which parse
    # TVM's tensor intrinsics on first use.
    with quick_frame_inspection():
        return tvm.compile(mod, target, relax_pipeline=for_target(target).pipeline(target))


def build_tower(config: PEConfig, dtype: str, target: tvm.target.Target,
                variants: Sequence[FeatureVariant] = ()) -> relax.VMExecutable:
    """`export_tower` with the target's backend, then `build`."""
    mod, _ = export_tower(config, dtype, tuple(variants), for_target(target))
    return build(mod, target)


def build_text_tower(config: PETextConfig, dtype: str,
                     target: tvm.target.Target) -> relax.VMExecutable:
    """`export_text_tower` with the target's backend, then `build`."""
    mod, _ = export_text_tower(config, dtype, for_target(target))
    return build(mod, target)
