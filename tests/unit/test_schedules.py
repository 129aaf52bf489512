"""The schedule stage of each backend: every kernel of a tower leaves it scheduled, as the
rules promise (CPU: a parallel outer loop, vectorised inner loops where the width allows; GPU:
every loop nest bound to threads), and a kernel no rule fits fails the build by name."""

from __future__ import annotations

import functools
import warnings

import pytest
import tvm
from tvm import tirx
from tvm.script import tirx as T

from pe_port.backends import GPU, for_target
from pe_port.build import cpu_target, cuda_target, export_tower
from pe_port.config import custom_config
from pe_port.kernels.schedule_cpu import UnscheduledKernelWarning, require_scheduled
from tests.helpers import compile_kernel

# Every op the towers use: RoPE and absolute posemb, cls token, attention pool, projection;
# width 40 is not a multiple of 16, so the generic layer norm is scheduled too.
CONFIG = custom_config(width=40, heads=2, use_rope2d=True, use_abs_posemb=True)


@functools.cache
def scheduled(backend_name: str) -> tvm.IRModule:
    target = {"cpu": cpu_target(), "gpu": cuda_target("sm_80")}[backend_name]
    backend = GPU if backend_name == "gpu" else for_target(target)
    mod, _ = export_tower(CONFIG, "float32", (), backend)
    with target, warnings.catch_warnings():
        warnings.simplefilter("error", UnscheduledKernelWarning)  # none in the fp32 build
        return tvm.transform.Sequential(backend.schedule_stage(target))(mod)


def kernels(mod: tvm.IRModule) -> dict[str, tirx.PrimFunc]:
    return {gvar.name_hint: func for gvar, func in mod.functions_items()
            if isinstance(func, tirx.PrimFunc)}


def loop_kinds(func: tirx.PrimFunc) -> str:
    """The TVMScript of the kernel: its loops print as `T.parallel(`, `T.vectorized(`,
    `T.thread_binding(..., thread="threadIdx.x")`."""
    return func.script()


def test_every_cpu_kernel_runs_in_parallel():
    funcs = kernels(scheduled("cpu"))
    assert len(funcs) >= 8
    for name, func in funcs.items():
        assert "T.parallel(" in loop_kinds(func), f"{name} has no parallel loop"


def test_cpu_rule_vectorises_the_feature_axis():
    """RoPE (head_dim 20: no whole vector) stays scalar; the copies of width 40 do too; the
    patch gather has 16 x 16 pixels per row: vectorised. Hand-written kernels carry their own
    vector loops."""
    funcs = kernels(scheduled("cpu"))
    vectorised = {name for name, func in funcs.items() if "T.vectorized(" in loop_kinds(func)}
    assert any(name.startswith("dense") for name in vectorised), vectorised
    assert any(name.startswith("attention") for name in vectorised), vectorised


def test_every_gpu_kernel_is_bound_to_threads():
    funcs = kernels(scheduled("gpu"))
    assert len(funcs) >= 8
    for name, func in funcs.items():
        script = loop_kinds(func)
        assert '"blockIdx.x"' in script and '"threadIdx.x"' in script, f"{name} is not bound"


def test_a_kernel_no_rule_fits_fails_the_build_by_name():
    @T.prim_func(private=True)
    def lonely(a: T.Buffer((4,), "float32")):
        for i in range(4):
            a[i] = T.float32(1)

    mod = tvm.IRModule({"lonely_kernel": lonely})
    # The error crosses TVM's pass boundary as the RuntimeError it derives from.
    with pytest.raises(RuntimeError, match="no schedule rule fits kernel.*lonely_kernel"):
        require_scheduled("CPU")(mod)


def test_a_kernel_no_rule_fits_is_a_warning_where_not_strict():
    @T.prim_func(private=True)
    def lonely(a: T.Buffer((4,), "float32")):
        for i in range(4):
            a[i] = T.float32(2)

    with pytest.warns(UnscheduledKernelWarning, match="lonely_kernel"):
        require_scheduled("CPU", strict=False)(tvm.IRModule({"lonely_kernel": lonely}))


def lowered_script(kernel: tirx.PrimFunc) -> str:
    """The kernel as the CPU build lowers it, just after `LowerTVMBuiltin` (where a buffer
    becomes either a stack slot or a `TVMBackendAllocWorkspace` call)."""
    seen = {}

    @tvm.ir.instrument.pass_instrument
    class Capture:
        def run_after_pass(self, mod, info):
            if info.name == "tirx.LowerTVMBuiltin":
                seen["script"] = mod.script()

    with tvm.transform.PassContext(instruments=[Capture()]):
        compile_kernel(kernel)
    return seen["script"]


@pytest.mark.parametrize("kind", ["dense", "attention", "causal_attention", "layer_norm"])
def test_cpu_kernels_allocate_no_heap_memory_per_task(kind):
    """A name assigned without `T.let` in TVMScript becomes a one-element buffer, and a
    `scope="local"` buffer is never put on the stack: inside the parallel loop either one is
    a `TVMBackendAllocWorkspace` and a free per task (a tenth of PE-Core-T16-384's time at
    batch 8). The attention's scores row has a size known only at run time: its one workspace
    per task is the exception."""
    from pe_port.kernels.attention import make_attention_kernel
    from pe_port.kernels.dense import make_dense_kernel
    from pe_port.kernels.isa import vector_isa
    from pe_port.kernels.layer_norm import make_layer_norm_kernel

    isa = vector_isa(cpu_target())
    kernel, allowed = {
        "dense": lambda: (make_dense_kernel(48, 32, "gelu", "scaled_add", isa), 0),
        "attention": lambda: (make_attention_kernel(2, 32, 0.125, False, isa), 1),
        "causal_attention": lambda: (make_attention_kernel(2, 32, 0.125, True, isa), 1),
        "layer_norm": lambda: (make_layer_norm_kernel(48, 1e-6), 0),
    }[kind]()
    script = lowered_script(kernel)
    assert script.count("TVMBackendAllocWorkspace") == allowed, script
