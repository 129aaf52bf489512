"""Schedules for the CPU kernels that are not hand-written: RoPE, the position-embedding
resize, copies, and layer norms of widths that are not a multiple of 16.

TVM's default CPU pipeline leaves legalized operators as written: one thread, scalar loops.
After the matmuls and attention were hand-written, these "small" kernels took a third of the
time of a PE-Core-T16 forward pass at batch 8. The pass below gives each of them the obvious
schedule: rows in parallel, the innermost (feature) axis vectorised. Row-wise reductions (layer
norm, softmax) use dlight's CPU reduction rule, which does the same for them.

The hand-written kernels (`pe_port.kernels.cpu`) carry their schedule in their loop nest and
have no schedulable blocks; the pass leaves them alone.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

VECTOR_LANES = 16  # fp32 lanes of an AVX-512 register; LLVM splits them on narrower targets


def _constant_extent(sch: s_tir.Schedule, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def _parallel_vectorized(sch: s_tir.Schedule, block) -> None:
    """Outer loops fused and parallel; the innermost loop vectorised when its extent allows."""
    loops = sch.get_loops(block)
    if not loops:
        return
    inner = loops[-1]
    extent = _constant_extent(sch, inner)
    if len(loops) > 1 and extent and extent % VECTOR_LANES == 0:
        outer_part, lanes = sch.split(inner, factors=[None, VECTOR_LANES])
        sch.vectorize(lanes)
        loops = [*loops[:-1], outer_part]
    elif len(loops) > 1:
        loops = loops[:-1]  # a short or ragged feature axis runs scalar, rows still parallel
    sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])


def _schedule_injective(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """Inline what can be inlined, then parallelise and vectorise every remaining block."""
    sch = s_tir.Schedule(func)
    try:
        root = sch.get_sblock("root")
    except s_tir.ScheduleError:
        return None  # a hand-written kernel: plain loops, its schedule already in them
    blocks = sch.get_child_blocks(root)
    if not blocks:
        return None
    for block in blocks[:-1]:
        try:
            sch.compute_inline(block)
        except s_tir.ScheduleError:
            pass  # e.g. RoPE's angle table: computed once, read by many outputs
    for block in sch.get_child_blocks(root):
        if any(iter_var.iter_type != tirx.IterVar.DataPar
               for iter_var in sch.get(block).iter_vars):
            return None  # a reduction: not this rule's business
        _parallel_vectorized(sch, block)
    return sch.mod["main"]


def _schedule_reduction(func: tirx.PrimFunc, target: tvm.target.Target) -> tirx.PrimFunc | None:
    from tvm.s_tir import dlight

    try:
        sch = dlight.cpu.Reduction().apply(func, target, False)
    except s_tir.ScheduleError:
        return None
    return None if sch is None else sch.mod["main"]


def schedule_for_cpu(target: tvm.target.Target) -> tvm.transform.Pass:
    """A pass: every unscheduled kernel with blocks gets a row-parallel, vectorised schedule."""

    def schedule(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
        try:
            return _schedule_reduction(func, target) or _schedule_injective(func)
        except RuntimeError:  # ScheduleError, or TVM refusing a loop (e.g. of extent 0)
            return None  # unscheduled is slow but correct

    @tvm.transform.module_pass(opt_level=0, name="ScheduleForCPU")
    def schedule_module(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        for gvar, func in list(mod.functions_items()):
            if not isinstance(func, tirx.PrimFunc) or func.attrs.get("tirx.is_scheduled"):
                continue
            scheduled = schedule(func)
            if scheduled is not None:
                mod[gvar] = scheduled.with_attr("tirx.is_scheduled", True)
        return mod

    return schedule_module
