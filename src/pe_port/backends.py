"""Backends: for one family of targets, what the model's ops become and how the graph is built.

The model (`model.py`) calls `ops.linear`, `ops.attention`, ...; `ops` hands each call to the
backend the graph is being built with. A `Backend` owns three things:

- its ops: the generic Relax ops (`Backend`, which any target legalizes), or hand-written
  kernels from `pe_port.kernels` where they pay (`CpuBackend`, `GpuBackend`);
- its build pipeline: TVM's pipeline for the target with the schedules our kernels need;
- its device: where the compiled functions run.

`for_target(target)` picks one. To add a target: subclass `Backend` here, override the ops that
get a kernel (kernels live in `pe_port/kernels/<op>.py` beside the other targets' kernels of
the same op), give it a `pipeline` and a `device`, and add it to `for_target`. Test and bench
variants (the GPU graph run serially on the CPU, attention unfused) subclass these in the
tests and scripts that use them; nothing here lists them.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op

from pe_port.kernels.attention import cpu_attention, gpu_flash_attention
from pe_port.kernels.common import NEG_LARGE
from pe_port.kernels.dense import cpu_dense, gpu_dense
from pe_port.kernels.isa import AVX2, AVX512, NEON, SSE2, VectorIsa, vector_isa
from pe_port.kernels.layer_norm import cpu_layer_norm, cpu_layer_norm_fits
from pe_port.kernels.patches import image_patches
from pe_port.kernels.schedule_cpu import cpu_rules, schedule_passes
from pe_port.kernels.schedule_gpu import gpu_rules


def _f32(x: nn.Tensor | None) -> nn.Tensor | None:
    """`x` in float32 (None stays None: an absent bias, gamma or residual)."""
    return x if x is None or x.dtype == "float32" else op.astype(x, "float32")


def _as(x: nn.Tensor, dtype: str) -> nn.Tensor:
    return x if x.dtype == dtype else op.astype(x, dtype)


class Backend:
    """Plain Relax ops that any target legalizes. Matmuls accumulate and LayerNorm computes its
    statistics in float32 whatever the activation dtype; results are stored in that dtype."""

    name = "generic"

    # ---- ops --------------------------------------------------------------------------------
    def linear(self, x: nn.Tensor, weight: nn.Tensor, bias: nn.Tensor | None,
               activation: str | None = None, residual: nn.Tensor | None = None,
               gamma: nn.Tensor | None = None) -> nn.Tensor:
        """`residual + gamma * act(x @ weight.T + bias)`; bias, act, gamma, residual optional."""
        y = op.matmul(x, op.permute_dims(weight), out_dtype="float32")
        bias, residual, gamma = _f32(bias), _f32(residual), _f32(gamma)
        if bias is not None:
            y = y + bias
        if activation == "gelu":
            y = op.gelu(y)
        if gamma is not None:
            y = y * gamma
        return _as(y if residual is None else residual + y, x.dtype)

    def layer_norm(self, x: nn.Tensor, weight: nn.Tensor, bias: nn.Tensor,
                   eps: float) -> nn.Tensor:
        """LayerNorm over the last axis (Relax's layer_norm refuses bfloat16: stats in fp32)."""
        width = int(x.shape[-1])
        return _as(op.layer_norm(_f32(x), width, _f32(weight), _f32(bias), eps=eps), x.dtype)

    def project(self, x: nn.Tensor, proj: nn.Tensor) -> nn.Tensor:
        """`x @ proj` for an `[in, out]` matrix (the final projection, stored unlike Linear)."""
        return _as(op.matmul(x, proj, out_dtype="float32"), x.dtype)

    def attention(self, q: nn.Tensor, k: nn.Tensor, v: nn.Tensor, scale: float,
                  causal: bool = False) -> nn.Tensor:
        """softmax(q k^T * scale) v over `[b, s, heads, head_dim]`; `[b, s_q, heads * head_dim]`
        out. Scores and softmax in float32, the weights back in q's dtype for `@ v`.
        `causal`: PyTorch's additive mask above the diagonal, finite (`NEG_LARGE`: TVM 0.27
        fails to legalize a `full` of -inf) but as final, `exp` of it is exactly 0."""
        batch, seq, heads, head_dim = q.shape
        keys = k.shape[1]
        q, k, v = (op.permute_dims(t, [0, 2, 1, 3]) for t in (q, k, v))
        scores = op.matmul(q, op.permute_dims(k, [0, 1, 3, 2]), out_dtype="float32") * scale
        if causal:
            scores = scores + op.triu(op.full((seq, keys), NEG_LARGE, "float32"), 1)
        weights = _as(op.softmax(scores, axis=-1), v.dtype)
        out = _as(op.matmul(weights, v, out_dtype="float32"), v.dtype)
        return op.reshape(op.permute_dims(out, [0, 2, 1, 3]), (batch, seq, heads * head_dim))

    def patch_embed(self, x: nn.Tensor, weight: nn.Tensor, patch: int) -> nn.Tensor:
        """Conv2d(kernel = stride = patch, no bias) as `[b, gh * gw, width]` tokens."""
        batch, _, height, width_px = x.shape
        width = int(weight.shape[0])
        patches = op.conv2d(x, weight, stride=patch)  # [b, width, gh, gw]
        tokens = (height // patch) * (width_px // patch)
        return op.permute_dims(op.reshape(patches, (batch, width, tokens)), [0, 2, 1])

    def _patch_embed_as_matmul(self, x: nn.Tensor, weight: nn.Tensor, patch: int) -> nn.Tensor:
        """The patch embedding as a `linear` over the patch rows (`c, ky, kx` order, as the
        conv weight is laid out)."""
        width, channels = int(weight.shape[0]), int(x.shape[1])
        flat_weight = op.reshape(weight, (width, channels * patch * patch))
        return self.linear(image_patches(x, patch), flat_weight, bias=None)

    # ---- build and run ------------------------------------------------------------------------
    def pipeline(self, target: tvm.target.Target) -> str | tvm.transform.Pass:
        """The Relax pipeline `tvm.compile` uses for this backend's targets."""
        return "default"

    def device(self, target: tvm.target.Target) -> tvm.runtime.Device:
        return tvm.device(target.kind.name, 0)

    def schedule_stage(self, target: tvm.target.Target) -> list[tvm.transform.Pass]:
        """Legalization and scheduling: what a backend with kernels changes in TVM's pipeline."""
        raise NotImplementedError

    def _pipeline_around(self, stages, target: tvm.target.Target) -> tvm.transform.Pass:
        """TVM's pipeline for the target (`stages`: the module of `tvm.relax.backend` that
        defines its phases) with this backend's `schedule_stage` in the middle.

        Plus one pass TVM's pipeline lacks: dead-code elimination once reshapes have become
        views (`RewriteDataflowReshape`). Their kernels, a quarter of a tower's, were still
        compiled by LLVM, which is most of a build's time.
        """

        @tvm.transform.module_pass(opt_level=0, name=f"PEPort{self.name.upper()}Pipeline")
        def build(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
            with target:
                passes = (stages.library_dispatch_passes(target) + self.schedule_stage(target)
                          + stages.dataflow_lower_passes(target)
                          + [relax.transform.DeadCodeElimination()]
                          + stages.finalize_passes(target))
                return tvm.transform.Sequential(passes)(mod)

        return build


class CpuBackend(Backend):
    """LLVM targets: the hand-written CPU kernels for float32 (fp16/bf16 take the generic ops),
    their register tiles sized for the target's vector unit (`isa`: AVX-512, AVX2, NEON, SSE2).

    Pipeline: TVM's CPU pipeline, with the dlight rules of `schedule_cpu` after legalization
    and no operator fusion: with `FuseOps`/`FuseTIR`, LLVM compiled the very same dense kernel
    3x slower (its accumulators went to memory at every step), and the kernels it would fuse
    here are small copies.
    """

    name = "cpu"

    def __init__(self, isa: VectorIsa) -> None:
        self.isa = isa

    def linear(self, x, weight, bias, activation=None, residual=None, gamma=None):
        if x.dtype != "float32":
            return super().linear(x, weight, bias, activation, residual, gamma)
        return cpu_dense(x, weight, bias, activation, residual, gamma, isa=self.isa)

    def layer_norm(self, x, weight, bias, eps):
        if x.dtype != "float32" or x.ndim != 3 or not cpu_layer_norm_fits(int(x.shape[-1])):
            return super().layer_norm(x, weight, bias, eps)
        return cpu_layer_norm(x, weight, bias, eps)

    def project(self, x, proj):
        if x.dtype != "float32":
            return super().project(x, proj)
        # Transposed and packed once, at load: the transform depends on the weight alone.
        return cpu_dense(x, op.permute_dims(proj), bias=None, isa=self.isa)

    def attention(self, q, k, v, scale, causal=False):
        if q.dtype != "float32":
            return super().attention(q, k, v, scale, causal)
        return cpu_attention(q, k, v, scale, causal, isa=self.isa)

    def patch_embed(self, x, weight, patch):
        if x.dtype != "float32":
            return super().patch_embed(x, weight, patch)
        return self._patch_embed_as_matmul(x, weight, patch)

    def schedule_stage(self, target) -> list[tvm.transform.Pass]:
        """Legalization, then every kernel scheduled (or the build fails, naming it)."""
        # Not strict: the generic and half-precision graphs on a CPU keep TVM's plain matmuls
        # and convolutions (correct, slow, and warned about); the float32 path has none.
        return [relax.transform.LegalizeOps(), *schedule_passes(cpu_rules(), "CPU", strict=False)]

    def pipeline(self, target):
        from tvm.relax.backend.cpu_generic import pipeline as cpu

        return self._pipeline_around(cpu, target)

    def device(self, target):
        return tvm.cpu(0)


class GpuBackend(Backend):
    """CUDA: the generic ops (fp16/bf16 matmuls on the tensor cores, scheduled by dlight, reading
    the weights in their stored layout), the flash attention kernel, and the patch embedding
    as a matmul.

    Pipeline: TVM's CUDA pipeline with the rules of `schedule_gpu` in place of its dlight step.
    `emulate` builds the flash kernel in its serial form, so the GPU graph runs on a CPU.
    """

    name = "gpu"

    def __init__(self, emulate: bool = False) -> None:
        self.emulate = emulate

    def linear(self, x, weight, bias, activation=None, residual=None, gamma=None):
        if x.dtype == "float32":  # plain cores: measured only as the generic matmul
            return super().linear(x, weight, bias, activation, residual, gamma)
        return gpu_dense(x, weight, bias, activation, residual, gamma)

    def attention(self, q, k, v, scale, causal=False):
        return gpu_flash_attention(q, k, v, scale, emulate=self.emulate, causal=causal)

    def patch_embed(self, x, weight, patch):
        return self._patch_embed_as_matmul(x, weight, patch)

    def schedule_stage(self, target) -> list[tvm.transform.Pass]:
        """TVM's CUDA legalization (with fusion) less its dlight step, then our rules; a kernel
        no rule schedules fails the build, naming it."""
        from tvm.relax.backend.cuda import pipeline as cuda

        legalize = [p for p in cuda.legalize_passes(target)
                    if "ApplyDefaultSchedule" not in type(p).__name__]
        return [*legalize, *schedule_passes(gpu_rules(), "GPU")]

    def pipeline(self, target):
        from tvm.relax.backend.cuda import pipeline as cuda

        return self._pipeline_around(cuda, target)

    def device(self, target):
        return tvm.cuda(0)


GENERIC = Backend()
CPU_BACKENDS = {isa: CpuBackend(isa) for isa in (AVX512, AVX2, NEON, SSE2)}
GPU = GpuBackend()


def for_target(target: tvm.target.Target) -> Backend:
    """The backend of a target: LLVM -> CPU (tiled for its vector unit), CUDA (any GPU target)
    -> GPU, else generic."""
    if target.kind.name == "llvm":
        return CPU_BACKENDS[vector_isa(target)]
    if "gpu" in target.keys:
        return GPU
    return GENERIC
