"""Schedules for the CPU kernels that are not hand-written: RoPE, the position-embedding
resize, copies, the key packing, layer norms of widths that are not a multiple of 16.

TVM's default CPU pipeline leaves legalized operators as written: one thread, scalar loops.
After the matmuls and attention were hand-written, these "small" kernels took a third of the
time of a PE-Core-T16 forward pass at batch 8. They are scheduled with TVM's own machinery,
`dlight.ApplyDefaultSchedule` over two `dlight.ScheduleRule`s: dlight's CPU reduction rule for
row-wise reductions (layer norm, softmax), and `RowParallelVectorized` below for everything
else: rows in parallel, the innermost (feature) axis vectorised.

The hand-written kernels carry their schedule in their loop nest and the attribute
`tirx.is_scheduled`, so the rules leave them alone. `schedule_passes` ends with
`require_scheduled`: a kernel no rule could schedule is named in an `UnscheduledKernelWarning`
(on the GPU, an error), instead of running as a slow scalar loop nobody notices; the float32
CPU build of every tower is checked to emit none.
"""

from __future__ import annotations

import warnings

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight

VECTOR_LANES = 16  # fp32 lanes of an AVX-512 register; LLVM splits them on narrower targets


class UnscheduledKernelError(RuntimeError):
    """A kernel left without a schedule: a rule is missing for it (a bug, not a user error)."""


class UnscheduledKernelWarning(UserWarning):
    """A kernel left as TVM legalized it (one thread, scalar loops): correct but slow. The
    float32 CPU build must emit none (`tests/unit/test_schedules.py`); the generic and
    half-precision graphs on a CPU (matmuls and convolutions no rule here takes) do."""


class RowParallelVectorized(dlight.ScheduleRule):
    """Injective kernels: inline what can be inlined, then run the outer loops of every block
    fused and in parallel and vectorise the innermost loop when its extent allows."""

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, tunable: bool):
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        if not blocks:
            return None
        for block in blocks[:-1]:
            try:
                sch.compute_inline(block)
            except s_tir.ScheduleError:
                pass  # e.g. RoPE's angle table: computed once, read by many outputs
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        if any(iter_var.iter_type != tirx.IterVar.DataPar
               for block in blocks for iter_var in sch.get(block).iter_vars):
            return None  # a reduction: not this rule's business
        for block in blocks:
            _parallel_vectorized(sch, block)
        return sch


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


class FirstThatFits(dlight.ScheduleRule):
    """`rule`, except that a kernel it fails on (`ScheduleError`, or a result `fits` refuses)
    counts as "not mine", so `ApplyDefaultSchedule` moves on to the next rule."""

    def __init__(self, rule: dlight.ScheduleRule, fits=None) -> None:
        self.rule = rule
        self.fits = fits

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, tunable: bool):
        try:
            space = self.rule.apply(func, target, tunable)
        except s_tir.ScheduleError:
            return None
        if space is None or self.fits is None:
            return space
        sch = space if isinstance(space, s_tir.Schedule) else space[0]
        return space if self.fits(sch.mod["main"]) else None


def cpu_rules() -> list[dlight.ScheduleRule]:
    """The rules the CPU build tries on each kernel, in order."""
    return [FirstThatFits(dlight.cpu.Reduction()), RowParallelVectorized()]


def unscheduled_kernels(mod: tvm.IRModule) -> list[str]:
    """Names of the kernels in `mod` that nothing scheduled."""
    return sorted(gvar.name_hint for gvar, func in mod.functions_items()
                  if isinstance(func, tirx.PrimFunc) and not func.attrs.get("tirx.is_scheduled"))


def require_scheduled(stage: str, strict: bool = True) -> tvm.transform.Pass:
    """A pass that fails the build (`strict`), or warns, if any kernel is left unscheduled."""

    @tvm.transform.module_pass(opt_level=0, name=f"RequireScheduled{stage}")
    def check(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        missing = unscheduled_kernels(mod)
        if missing:
            message = (f"{stage}: no schedule rule fits kernel(s) {', '.join(missing)}; add a "
                       f"rule in pe_port/kernels/schedule_{stage.lower()}.py or write the "
                       "kernel by hand")
            if strict:
                raise UnscheduledKernelError(message)
            warnings.warn(message, UnscheduledKernelWarning, stacklevel=1)
        return mod

    return check


def schedule_passes(rules: list[dlight.ScheduleRule], stage: str,
                    strict: bool = True) -> list[tvm.transform.Pass]:
    """TVM's `ApplyDefaultSchedule` with `rules`, then `require_scheduled`."""
    return [dlight.ApplyDefaultSchedule(*rules), require_scheduled(stage, strict)]
