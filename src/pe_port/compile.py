"""From the Relax model to an executable: targets, exported functions and the build pipeline."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path

import tvm
import tvm_ffi
from tvm import relax
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn.spec import MethodSpec, ModuleSpec
from tvm.target import codegen

from pe_port import ops
from pe_port.config import PEConfig
from pe_port.errors import UserError
from pe_port.kernels.cpu_schedule import schedule_for_cpu
from pe_port.kernels.gpu_schedule import schedule_for_gpu
from pe_port.model import VisionTransformer

DTYPES = ("float32", "float16", "bfloat16")
# Compute capability the CUDA build targets unless told otherwise (H100).
DEFAULT_CUDA_ARCH = "sm_90"


class TargetError(UserError):
    """A target the port cannot compile for."""


def cpu_target(num_cores: int | None = None) -> tvm.target.Target:
    """An LLVM target for the CPU this process runs on, its features detected at run time.

    Falls back to a generic CPU of the host architecture when LLVM does not know the name.
    """
    mcpu = codegen.llvm_get_system_cpu()
    target: dict = {"kind": "llvm", "mtriple": _host_triple()}
    if mcpu and codegen.llvm_is_valid_cpu(mcpu, target["mtriple"]):
        target["mcpu"] = mcpu
    if num_cores is not None:
        target["num-cores"] = num_cores
    return tvm.target.Target(target)


def _host_triple() -> str:
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
    return tvm.target.Target({"kind": "cuda", "arch": arch}, host={"kind": "llvm",
                                                                   "mtriple": _host_triple()})


def local_cuda_arch() -> str | None:
    """"sm_XY" of GPU 0, or None without a GPU."""
    device = tvm.cuda(0)
    return "sm_" + device.compute_version.replace(".", "") if device.exist else None


def resolve_target(target: str | dict | tvm.target.Target) -> tvm.target.Target:
    """"cpu", "cuda", a TVM target dict, or a Target."""
    if isinstance(target, tvm.target.Target):
        return target
    if target == "cpu":
        return cpu_target()
    if target == "cuda":
        return cuda_target()
    if isinstance(target, dict):
        try:
            return tvm.target.Target(target)
        except Exception as err:  # TVM raises several error types for a bad dict
            raise TargetError(f"invalid TVM target {target!r}: {err}") from None
    raise TargetError(f"unknown target {target!r}; use 'cpu', 'cuda' or a TVM target dict")


def is_gpu(target: tvm.target.Target) -> bool:
    return "gpu" in target.keys


def features_function_name(norm: bool, layer_idx: int, strip_cls_token: bool, layers: int) -> str:
    """The exported name of one `forward_features` variant; the defaults keep the plain name."""
    stop_idx = (layers + layer_idx) % layers
    if (norm, stop_idx, strip_cls_token) == (False, layers - 1, False):
        return "forward_features"
    return f"forward_features_norm{int(norm)}_layer{stop_idx}_strip{int(strip_cls_token)}"


def transform_function_name(function: str) -> str:
    """The function that puts the weights in the layout `function` reads (run once, at load)."""
    return f"{function}_transform_params"


def lift_weight_transforms(mod: tvm.IRModule) -> tvm.IRModule:
    """Move weight-only work (packing for the CPU matmuls, transposes) out of every function
    into its own `transform_function_name(function)`, run once when the weights are loaded.

    One transform per function, not one shared by all: a shared one holds only what every
    function does to the weights, so the attention pool's packing (used by `forward`, not by
    `forward_features`) stayed in `forward` and ran at every call (5 ms of 95 on B16).
    """
    return relax.transform.LiftTransformParams(shared_transform=False)(mod)


def image_spec(dtype: str) -> nn.spec.Tensor:
    """Pixels `[batch, 3, height, width]`: batch and image size are symbolic."""
    return nn.spec.Tensor(["batch", 3, "height", "width"], dtype)


def kernel_backend_for(target: tvm.target.Target | None) -> str:
    """The CPU and the GPU get their hand-written kernels; anything else the generic ops."""
    if target is None:
        return "generic"
    if target.kind.name == "llvm":
        return "cpu"
    return "gpu" if is_gpu(target) else "generic"


def export_tower(
    config: PEConfig,
    dtype: str,
    feature_variants: tuple[tuple[bool, int, bool], ...] = (),
    target: tvm.target.Target | None = None,
    backend: str | None = None,
) -> tuple[tvm.IRModule, list[tuple[str, tuple[int, ...]]]]:
    """The Relax IRModule of the tower: `forward`, `forward_features` and any other variant.

    Each `(norm, layer_idx, strip_cls_token)` in `feature_variants` becomes one function, since
    these choose the graph's structure. `backend` (one of `ops.BACKENDS`) overrides the kernels
    `kernel_backend_for(target)` picks. Returns the module and the parameters' names and
    shapes, in the order the functions take them after the image.
    """
    return _export(config, dtype, tuple(feature_variants), backend or kernel_backend_for(target))


# Exporting is deterministic and an IRModule is immutable, so repeated loads share one export.
@functools.lru_cache(maxsize=32)
def _export(
    config: PEConfig, dtype: str, feature_variants: tuple[tuple[bool, int, bool], ...],
    backend: str,
) -> tuple[tvm.IRModule, list[tuple[str, tuple[int, ...]]]]:
    model = VisionTransformer(config, dtype)
    methods: dict[str, Callable] = {
        "forward": model.forward,
        "forward_features": model.forward_features,
    }
    for norm, layer_idx, strip in feature_variants:
        name = features_function_name(norm, layer_idx, strip, config.layers)
        methods[name] = functools.partial(
            model.forward_features, norm=norm, layer_idx=layer_idx, strip_cls_token=strip
        )
    specs = [MethodSpec.from_raw({"x": image_spec(dtype)}, method) for method in methods.values()]
    with ops.kernel_backend(backend):
        mod, params = model.export_tvm(ModuleSpec(model, list(methods), specs))
    mod = lift_weight_transforms(mod)
    return mod, [(name, tuple(int(d) for d in param.shape)) for name, param in params]


def build(mod: tvm.IRModule, target: tvm.target.Target) -> relax.VMExecutable:
    """Compile a Relax module: TVM's pipelines, with our schedules for the kernels they leave
    unscheduled (`schedule_for_cpu` on CPU, dlight rules with fallbacks on CUDA)."""
    if is_gpu(target):
        return tvm.compile(mod, target, relax_pipeline=_gpu_pipeline(target))
    return tvm.compile(mod, target, relax_pipeline=_cpu_pipeline(target))


def cache_dir() -> Path:
    """Where compiled libraries are kept: $PE_PORT_CACHE, else ~/.cache/pe_port."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pe_port"
    return Path(os.environ.get("PE_PORT_CACHE", default))


def cached_build(mod: tvm.IRModule, target: tvm.target.Target,
                 progress: Callable[[str], None] | None = None) -> relax.VMExecutable:
    """`build`, but a library compiled before for the same module and target is reused.

    The key covers the module's structure (hence config, dtype and exported functions), the
    target, the TVM and pe-port versions and the source of the build pipeline (schedules live
    there, outside the module), so any change among them compiles afresh.
    """
    from pe_port import __version__

    key_text = json.dumps([tvm_ffi.structural_hash(mod), str(target), tvm.__version__,
                           __version__, _pipeline_fingerprint()])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:24]
    path = cache_dir() / f"{key}.so"
    if path.is_file():
        return relax.VMExecutable(tvm.runtime.load_module(str(path)))
    if progress:
        progress(f"compiling for {target.kind.name} (first use; cached afterwards)")
    executable = build(mod, target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        executable.export_library(str(staged))
        os.replace(staged, path)  # atomic: a reader never sees half a library
    return executable


@functools.cache
def _pipeline_fingerprint() -> str:
    """A hash of this file and the kernels' source: what turns a module into a library."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for path in [Path(__file__), *sorted((here / "kernels").glob("*.py"))]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _cpu_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """TVM's default build pipeline with `schedule_for_cpu` after legalization.

    No operator fusion (`FuseOps`/`FuseTIR`): with it in the pipeline, LLVM compiled the very
    same dense kernel 3x slower (its accumulators went to memory at every step), and the
    kernels it would fuse here are small copies.
    """
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0)
    def pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            passes = (cpu.library_dispatch_passes(target)
                      + [relax.transform.LegalizeOps(), schedule_for_cpu(target)]
                      + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))
            return tvm.transform.Sequential(passes)(mod)

    return pipeline


def _gpu_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """TVM's CUDA pipeline with `schedule_for_gpu` in place of its dlight step."""
    from tvm.relax.backend.cuda import pipeline as cuda

    @tvm.transform.module_pass(opt_level=0)
    def pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            legalize = [p for p in cuda.legalize_passes(target)
                        if "ApplyDefaultSchedule" not in type(p).__name__]
            passes = (cuda.library_dispatch_passes(target) + legalize
                      + [schedule_for_gpu(target)]
                      + cuda.dataflow_lower_passes(target) + cuda.finalize_passes(target))
            return tvm.transform.Sequential(passes)(mod)

    return pipeline
