"""Schedules for the GPU kernels that are not hand-written: matmuls (with their fused
epilogues), LayerNorm, RoPE, copies. dlight's rules do the work; this file picks among them.

- `gpu_rules` are dlight's GPU rules, each wrapped so that a rule failing on a kernel hands it
  to the next (dlight's `ApplyDefaultSchedule` would stop the build); the build runs them with
  `schedule_cpu.schedule_passes`, which also fails it if a kernel stays unscheduled.
- dlight puts fp16 matmuls on the tensor cores (WMMA, float32 accumulators; when no dimension is
  64 or less) but bf16 ones on the plain cores: TVM registers no bf16 tensor intrinsics.
  `BF16TensorCoreMatmul` registers the bf16 counterparts of the fp16 WMMA intrinsics (the same
  16x16x16 tiles; Ampere and later run bf16 WMMA) and runs dlight's tensor-core matmul
  schedule with them.

The hand-written kernels (`attention.gpu_flash_attention`) carry the attribute
`tirx.is_scheduled` and are left alone.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.analysis import get_root_block

from pe_port.kernels.schedule_cpu import FirstThatFits

WMMA_SHAPE = "16x16x16"


@functools.cache
def register_bf16_wmma_intrinsics() -> None:
    """Register bf16 WMMA loads (A, and B transposed, from dynamic shared memory) and the
    bf16 x bf16 -> f32 multiply, named as TVM names their fp16 counterparts with `bf16`."""
    from tvm.s_tir.tensor_intrin import cuda as cuda_intrinsics  # slow: parses all of them

    s_tir.TensorIntrin.register(
        f"wmma_load_{WMMA_SHAPE}_bf16_a_shared_dyn",
        *cuda_intrinsics.get_wmma_load_intrin(16, 16, 16, "bfloat16", "shared.dyn", False, False),
    )
    s_tir.TensorIntrin.register(
        f"wmma_load_{WMMA_SHAPE}_bf16_b_trans_shared_dyn",
        *cuda_intrinsics.get_wmma_load_intrin(16, 16, 16, "bfloat16", "shared.dyn", True, True),
    )
    s_tir.TensorIntrin.register(
        f"wmma_sync_{WMMA_SHAPE}_bf16bf16f32_trans",
        *cuda_intrinsics.get_wmma_sync_intrin(16, 16, 16, "bfloat16", "float32", True),
    )


@contextlib.contextmanager
def _bf16_wmma_group() -> Iterator[None]:
    """While active, TVM's WMMA intrinsic-group lookup answers with the bf16 intrinsics.

    dlight's tensor-core matmul asks for the fp16 group by name; its schedule does not depend
    on the element type otherwise (tiles, shared-memory staging and fragments are the same for
    two-byte types), so swapping the names is all it takes.
    """
    from tvm.s_tir.tensor_intrin import cuda as cuda_intrinsics

    register_bf16_wmma_intrinsics()
    fp16_group = cuda_intrinsics.get_wmma_intrin_group

    def bf16_group(load_scope, store_scope, in_dtype, out_dtype, trans_b):
        group = fp16_group(load_scope, store_scope, in_dtype, out_dtype, trans_b)
        return {role: name.replace("_f16_", "_bf16_").replace("f16f16", "bf16bf16")
                for role, name in group.items()}

    cuda_intrinsics.get_wmma_intrin_group = bf16_group
    try:
        yield
    finally:
        cuda_intrinsics.get_wmma_intrin_group = fp16_group


def _reads_bf16(func: tirx.PrimFunc) -> bool:
    """Whether any top-level block of the kernel reads a bfloat16 buffer."""
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(get_root_block(sch))
    return any(region.source.dtype == "bfloat16" for block in blocks
               for region in sch.get(block).reads)


class BF16TensorCoreMatmul(dlight.ScheduleRule):
    """dlight's tensor-core matmul schedule, with the bf16 WMMA intrinsics, for bf16 inputs."""

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc) or not _reads_bf16(func):
            return None
        if int(str(target.attrs.get("arch", "sm_0")).removeprefix("sm_") or 0) < 80:
            return None  # bf16 WMMA needs Ampere or later
        with _bf16_wmma_group():
            try:
                return dlight.gpu.matmul.MatmulTensorization().apply(func, target, tunable)
            except AssertionError:  # its analysis asserts on reductions that are no matmul
                return None


def gpu_rules() -> list[dlight.ScheduleRule]:
    """The rules the GPU build tries on each kernel, in order; the first that fits wins.

    Unlike dlight's own list, a rule that fails on a kernel (the general reduction rule does on
    the attention pool's one-query matmul) or leaves scratch memory of symbolic size (CUDA
    cannot allocate it) passes the kernel on to the next rule; `Fallback` schedules anything.
    """
    rules = [BF16TensorCoreMatmul(), dlight.gpu.Matmul(), dlight.gpu.GEMV(),
             dlight.gpu.Reduction(), dlight.gpu.GeneralReduction(), dlight.gpu.Fallback()]
    return [FirstThatFits(rule, fits=lambda func: not _has_symbolic_scratch(func))
            for rule in rules]


def _has_symbolic_scratch(func: tirx.PrimFunc) -> bool:
    """Whether a scheduled kernel keeps a register or shared buffer of non-constant size once
    TVM has shrunk each to what one thread or block touches (CUDA cannot allocate those)."""
    from tvm.s_tir.analysis import detect_buffer_access_lca

    compact = tvm.transform.Sequential([
        s_tir.transform.LowerCrossThreadReduction(),
        s_tir.transform.LowerInitBlock(),
        s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
        s_tir.transform.ConvertBlocksToOpaque(),
        s_tir.transform.CompactBufferAllocation(),
    ])
    compacted = compact(tvm.IRModule({"main": func}))["main"]
    return any(
        buf.scope() != "global" and not all(isinstance(d, tirx.IntImm) for d in buf.shape)
        for buf in detect_buffer_access_lca(compacted)
    )
