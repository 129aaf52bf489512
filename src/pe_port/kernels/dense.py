"""Matmul on the CPU: packed weights and a fused epilogue in one TIR kernel (`cpu_dense`).

TVM's default CPU pipeline leaves every kernel unscheduled (scalar loops, one thread). This
kernel is written with its schedule in the loop nest itself: a register tile of `rows x cols`
outputs accumulates over the reduction while LLVM keeps the tile in vector registers, tiles run in
parallel, and the row count (batch x tokens) stays symbolic. Rows past the end are computed on a
clamped (valid) input row and never stored, so no branch sits in the inner loop. The tile's size
comes from the target's vector unit (`isa.py`): 6 x 64 on AVX-512, 6 x 16 on AVX2 and NEON.
Two memory measures keep the tile fed: inputs larger than the cache are walked in row blocks
(`X_CACHED_BYTES`), and each task prefetches a share of the next weight panel
(`PREFETCH_STEPS`), which matters when few rows share a panel.

On the GPU the kernel (`gpu_dense`) is the same computation as a plain loop nest that dlight
schedules on the tensor cores (`schedule_gpu.py`).
"""

from __future__ import annotations

import functools
import math

from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op
from tvm.script import tirx as T

from pe_port.kernels.common import exp_nonpositive
from pe_port.kernels.isa import VectorIsa
from pe_port.kernels.tvmscript import quick_frame_inspection


def dense_tile(n: int, isa: VectorIsa) -> tuple[int, int]:
    """Register tile (rows, cols) for an `n`-column output on `isa`: as many accumulator
    registers as the ISA allows (`isa.accumulators`), in rows of `isa.tile_vectors` vectors:
    AVX-512 6 x 64, AVX2 6 x 16, NEON 6 x 16, SSE2 6 x 8.
    Each step loads a row's vectors of weights and broadcasts one input per row, so 6 rows
    give each weight load 6 FMAs. A width the tile does not divide takes narrower columns."""
    cols = isa.tile_vectors * isa.lanes  # a power of two: halving it reaches 1
    while n % cols:
        cols //= 2
    vectors = max(1, cols // isa.lanes)
    return min(8, isa.accumulators // vectors), cols


def pack_weight(weight: nn.Tensor, isa: VectorIsa) -> nn.Tensor:
    """`[n, k]` (PyTorch's Linear layout) to `[n / cols, k, cols]`: each column tile contiguous.

    A pure function of a parameter, so `LiftTransformParams` moves it out of the forward pass:
    it runs once, when the weights are loaded.
    """
    n, k = (int(d) for d in weight.shape)
    _, cols = dense_tile(n, isa)
    return op.permute_dims(op.reshape(weight, (n // cols, cols, k)), [0, 2, 1])


def _gelu(value):
    """Exact GELU, `x * Phi(x) = x/2 * (1 + erf(x / sqrt 2))`, with a vectorisable erf."""
    return value * T.float32(0.5) * (T.float32(1.0) + _erf(value * T.float32(math.sqrt(0.5))))


# Abramowitz & Stegun 7.1.26: erf(x) = 1 - poly(t) exp(-x^2), t = 1 / (1 + p|x|), |error| < 1.5e-7.
_ERF_P = 0.3275911
_ERF_COEFFS = (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)


def _erf(x):
    """erf without a libm call: LLVM cannot vectorise `erff`, and GELU needs one per activation."""
    magnitude = T.fabs(x)
    t = T.float32(1.0) / (T.float32(1.0) + T.float32(_ERF_P) * magnitude)
    poly = T.float32(_ERF_COEFFS[0])
    for coeff in _ERF_COEFFS[1:]:
        poly = poly * t + T.float32(coeff)
    tail = poly * t * exp_nonpositive(-magnitude * magnitude)
    return T.if_then_else(x < T.float32(0), tail - T.float32(1.0), T.float32(1.0) - tail)


# Row blocks. Tasks walk the rows of x once per weight panel, so x is read `n / cols` times:
# from the L3 cache while it fits there, from memory when it does not. An x larger than
# X_CACHED_BYTES (a quarter of a 32 MB L3: the share of 2 of the 8 cores that usually share one)
# is cut into blocks of at most X_BLOCK_BYTES, and all panels walk one block before the next.
# Measured on a Zen 3 (AVX2, 2 cores, Spatial-B16-512 at batch 8, 25 MB x): the MLP matmuls
# 93 -> 148 GFLOP/s. Blocks of 2-4 MB beat 0.5 MB ones (each block re-reads every weight once,
# and a large K makes 0.5 MB only a few rows); an x under the threshold stays one block, as
# blocking gained nothing there.
X_CACHED_BYTES = 8 << 20
X_BLOCK_BYTES = 4 << 20

# Prefetch of the next weight panel. With few rows (the text tower at batch 1: 32 tokens, 6 row
# tiles) a panel serves only a few tasks, and the first of them waited on memory for it: the
# matmul streamed its weights at 6 GB/s on a machine that reads 10. So while a thread walks
# the row tiles of one panel, each tile asks for its share of the next panel's cache lines,
# one every PREFETCH_STEPS steps of the reduction, into L2. Measured on a Zen 3 (AVX2, 2 cores,
# 24 weight copies so that they come from memory): K 1024, N 4096 at 32 rows 101 -> 122
# GFLOP/s; at 197 rows and over (the vision towers) within noise. One prefetch per step of
# the reduction, next to every weight load, halved the speed: the prefetches are kept out of
# the innermost loop.
PREFETCH_STEPS = 4
CACHE_LINE_FLOATS = 16  # 64-byte lines


def prefetch_to_l2(buffer, index):
    """A hint that `buffer[index]`'s cache line will be read soon: LLVM's prefetch, for a read,
    into the second-level cache (locality 2), of data (not instructions)."""
    return T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0",
                                         T.address_of(buffer[index]), T.uint32(0),
                                         T.uint32(2), T.uint32(1)))


@functools.cache  # one parse per shape, not one per call site
@quick_frame_inspection()
def make_dense_kernel(k: int, n: int, activation: str | None, residual: str | None,
                      isa: VectorIsa, x_cached_bytes: int = X_CACHED_BYTES,
                      x_block_bytes: int = X_BLOCK_BYTES):
    """`out[b, s, n] = epilogue(x[b, s, k] @ w[n, k]^T + bias[n])` on packed `w [n/cols, k, cols]`.

    `activation`: None or "gelu". `residual`: None, "add" (`out = res + y`) or "scaled_add"
    (`out = res + gamma * y`, LayerScale fused into the residual branch). `x_cached_bytes`,
    `x_block_bytes`: when x is cut into row blocks, and how large they are (module constants;
    tests pass small ones to reach blocking with small inputs). The kernel walks the
    `batch x seq` rows as one axis but takes and returns `[batch, seq, ...]` tensors: reshaping
    around it would cost a copy each time, since TVM cannot prove that a reshape of symbolic
    shapes is free.
    """
    rows, cols = dense_tile(n, isa)
    col_tiles = n // cols

    def finish(y, bias, res, gamma, m, c):
        """The epilogue, built at parse time from the buffers a signature has."""
        y = y + bias[c]
        if activation == "gelu":
            y = _gelu(y)
        if gamma is not None:
            y = gamma[c] * y
        if res is not None:
            y = res[m, c] + y
        return y

    block_tiles_wanted = max(1, x_block_bytes // (rows * k * 4))
    steps = next(e for e in (PREFETCH_STEPS, 2, 1) if k % e == 0)  # reduction steps per slot
    slots = k // steps  # prefetch slots per task
    panel_lines = max(1, k * cols // CACHE_LINE_FLOATS)

    @T.macro
    def dense_body(x, w, bias, res, gamma, out, batch, seq):
        w_flat = T.decl_buffer((col_tiles * k * cols,), "float32", data=w.data)
        # x, res and out are viewed as the `[batch * seq, features]` matrices they are in
        # memory: indexed `[b, s, c]`, every row index divides by the symbolic `seq`, which
        # kept LLVM from vectorising the stores (3x slower).
        # Names bound with `T.let` stay values; a plain assignment would become a one-element
        # buffer, and inside the parallel loop a heap workspace per task.
        m_total: T.let[T.int64] = batch * seq
        row_tiles: T.let[T.int64] = (m_total + rows - 1) // rows
        # Column-panel major within a block of rows: the tasks a thread runs in a row share
        # one weight panel `[k, cols]`, which stays in L2 while the thread walks down the rows
        # of the block. An x that fits the cache is one block (see X_CACHED_BYTES).
        # Truncating division (all operands are non-negative): Python's `//` is TVM's floordiv,
        # which `LowerIntrin` expands by repeating its operands, and nested through these
        # bindings that took 16 s per kernel to compile.
        blocks: T.let[T.int64] = T.Select(
            m_total * (k * 4) > x_cached_bytes,
            T.truncdiv(row_tiles + block_tiles_wanted - 1, block_tiles_wanted), T.int64(1))
        # Balanced blocks: no near-empty last block leaving one thread idle.
        block_tiles: T.let[T.int64] = T.truncdiv(row_tiles + blocks - 1, blocks)
        for task in T.parallel(blocks * col_tiles * block_tiles):
            panel: T.let[T.int64] = T.truncdiv(T.truncmod(task, col_tiles * block_tiles),
                                               block_tiles)
            block: T.let[T.int64] = T.truncdiv(task, col_tiles * block_tiles)
            row0: T.let[T.int64] = (block * block_tiles + T.truncmod(task, block_tiles)) * rows
            # This task's share of the next panel's lines (see PREFETCH_STEPS), one per slot
            # (under 4 row tiles a block's shares outnumber the slots: the rest is not asked for).
            next_panel: T.let[T.int64] = T.truncmod(panel + 1, col_tiles)
            share: T.let[T.int64] = T.truncdiv(panel_lines + block_tiles - 1, block_tiles)
            first_line: T.let[T.int64] = T.truncmod(task, block_tiles) * share
            if row0 < m_total:
                acc = T.alloc_buffer((rows, cols), "float32")
                for i in T.unroll(rows):
                    for j in T.vectorized(cols):
                        acc[i, j] = T.float32(0)
                for slot in range(T.int64(slots)):
                    if slot < share:
                        prefetch_to_l2(w_flat, T.min(
                            (next_panel * panel_lines + T.min(first_line + slot, panel_lines - 1))
                            * CACHE_LINE_FLOATS, col_tiles * k * cols - 1))
                    for step in range(T.int64(steps)):
                        for i in T.unroll(rows):
                            for j in T.vectorized(cols):
                                acc[i, j] = acc[i, j] + x[
                                    T.min(row0 + i, m_total - 1), slot * steps + step] * w[
                                    panel, slot * steps + step, j]
                for i in T.unroll(rows):
                    if row0 + i < m_total:
                        for j in T.vectorized(cols):
                            out[row0 + i, panel * cols + j] = finish(
                                acc[i, j], bias, res, gamma, row0 + i, panel * cols + j)

    # One signature per epilogue: the buffers each one reads, nothing more. Only the one asked
    # for is defined: `@T.prim_func` parses at definition, and parsing is most of a build.
    if residual is None:
        @T.prim_func(private=True)
        def dense_plain(var_x: T.handle, var_w: T.handle, var_bias: T.handle, var_out: T.handle):
            T.func_attr({"op_pattern": 8, "tirx.noalias": True,
                         "tirx.is_scheduled": True})
            batch = T.int64()
            seq = T.int64()
            x_in = T.match_buffer(var_x, (batch, seq, k), "float32")
            w = T.match_buffer(var_w, (col_tiles, k, cols), "float32")
            bias = T.match_buffer(var_bias, (n,), "float32")
            out_3d = T.match_buffer(var_out, (batch, seq, n), "float32")
            x = T.decl_buffer((batch * seq, k), "float32", data=x_in.data)  # see dense_body
            out = T.decl_buffer((batch * seq, n), "float32", data=out_3d.data)
            dense_body(x, w, bias, None, None, out, batch, seq)
        return dense_plain
    elif residual == "add":
        @T.prim_func(private=True)
        def dense_add(var_x: T.handle, var_w: T.handle, var_bias: T.handle, var_res: T.handle,
                      var_out: T.handle):
            T.func_attr({"op_pattern": 8, "tirx.noalias": True,
                         "tirx.is_scheduled": True})
            batch = T.int64()
            seq = T.int64()
            x_in = T.match_buffer(var_x, (batch, seq, k), "float32")
            w = T.match_buffer(var_w, (col_tiles, k, cols), "float32")
            bias = T.match_buffer(var_bias, (n,), "float32")
            res_in = T.match_buffer(var_res, (batch, seq, n), "float32")
            out_3d = T.match_buffer(var_out, (batch, seq, n), "float32")
            x = T.decl_buffer((batch * seq, k), "float32", data=x_in.data)  # see dense_body
            out = T.decl_buffer((batch * seq, n), "float32", data=out_3d.data)
            res = T.decl_buffer((batch * seq, n), "float32", data=res_in.data)
            dense_body(x, w, bias, res, None, out, batch, seq)
        return dense_add
    else:
        @T.prim_func(private=True)
        def dense_scaled_add(var_x: T.handle, var_w: T.handle, var_bias: T.handle,
                             var_res: T.handle, var_gamma: T.handle, var_out: T.handle):
            T.func_attr({"op_pattern": 8, "tirx.noalias": True,
                         "tirx.is_scheduled": True})
            batch = T.int64()
            seq = T.int64()
            x_in = T.match_buffer(var_x, (batch, seq, k), "float32")
            w = T.match_buffer(var_w, (col_tiles, k, cols), "float32")
            bias = T.match_buffer(var_bias, (n,), "float32")
            res_in = T.match_buffer(var_res, (batch, seq, n), "float32")
            gamma = T.match_buffer(var_gamma, (n,), "float32")
            out_3d = T.match_buffer(var_out, (batch, seq, n), "float32")
            x = T.decl_buffer((batch * seq, k), "float32", data=x_in.data)  # see dense_body
            out = T.decl_buffer((batch * seq, n), "float32", data=out_3d.data)
            res = T.decl_buffer((batch * seq, n), "float32", data=res_in.data)
            dense_body(x, w, bias, res, gamma, out, batch, seq)
        return dense_scaled_add


def cpu_dense(
    x: nn.Tensor,
    weight: nn.Tensor,
    bias: nn.Tensor | None,
    activation: str | None = None,
    residual: nn.Tensor | None = None,
    gamma: nn.Tensor | None = None,
    *,
    isa: VectorIsa,
) -> nn.Tensor:
    """`x @ weight.T + bias`, then GELU or a (LayerScale-scaled) residual add, in one kernel
    tiled for `isa`.

    `x` is `[batch, seq, k]` (a `[batch, k]` input is taken as one token per image). No
    `bias` (the patch embedding, the final projection) adds zeros. `gamma` is only used with
    `residual`.
    """
    n = int(weight.shape[0])
    return _call_dense(lambda k, mode: make_dense_kernel(k, n, activation, mode, isa), "dense",
                       x, pack_weight(weight, isa), n, bias, residual, gamma, "float32")


def _call_dense(kernel_for, name: str, x: nn.Tensor, weight: nn.Tensor, n: int,
                bias: nn.Tensor | None, residual: nn.Tensor | None, gamma: nn.Tensor | None,
                dtype: str) -> nn.Tensor:
    """The call of a dense kernel `kernel_for(k, residual_mode)` with `cpu_dense`'s contract:
    a `[batch, k]` input as one token per image, zeros for a missing bias."""
    flat = x.ndim == 2
    if flat:
        x = op.unsqueeze(x, 1)
        residual = None if residual is None else op.unsqueeze(residual, 1)
    batch, seq, k = x.shape
    if bias is None:
        bias = op.zeros((n,), dtype)
    mode = None if residual is None else ("add" if gamma is None else "scaled_add")
    args = [x, weight, bias, *(t for t in (residual, gamma) if t is not None)]
    out = op.tensor_ir_op(kernel_for(int(k), mode), name, args=args,
                          out=nn.Tensor.placeholder((batch, seq, n), dtype))
    return op.squeeze(out, 1) if flat else out


@functools.cache
@quick_frame_inspection()
def make_gpu_dense_kernel(k: int, n: int, dtype: str, activation: str | None,
                          residual: str | None):
    """`out = epilogue(x[b, s, k] @ w[n, k]^T + bias[n])` in `dtype`, unscheduled: a matmul
    block (products of `dtype` inputs, float32 sums) and an epilogue block, which the GPU
    build's dlight rules put on the tensor cores and fold into the matmul's store.

    `w` is read as stored, `[out, in]`. Through the generic `matmul(x, permute_dims(w))` the
    transpose was lifted into the load-time weight transform, and dlight's tensor-core
    schedule (which stages B as `[out, in]` tiles, 4 elements along `in` per thread) gathered
    each group of 4 with scalar loads a row apart: 16 memory sectors for 64 useful bytes per
    warp. Read in place, each thread loads 4 neighbours at once and a warp reads whole lines.
    One kernel with its epilogue, rather than a matmul that TVM's FuseOps extends: FuseTIR
    refuses to merge a hand-written kernel whose symbolic row count differs in form from the
    graph's (the patch embedding's `h // 16 * (w // 16)` tokens).

    `activation`, `residual`: as `make_dense_kernel`; bias, gamma and residual are read in
    `dtype` and widened, the sum is rounded to `dtype` once, as `Backend.linear` does.
    """
    k, n = T.int64(k), T.int64(n)  # index arithmetic in int64 throughout, as TVM legalizes

    def finish(y, bias, res, gamma, b, i, j):
        """The epilogue in float32, built at parse time from the buffers a signature has."""
        y = y + T.Cast("float32", bias[j])
        if activation == "gelu":
            y = y * T.float32(0.5) * (T.float32(1.0) + T.erf(y * T.float32(math.sqrt(0.5))))
        if gamma is not None:
            y = T.Cast("float32", gamma[j]) * y
        if res is not None:
            y = T.Cast("float32", res[b, i, j]) + y
        return T.Cast(dtype, y)

    @T.macro
    def dense_body(x, w, bias, res, gamma, out, batch, seq):
        acc = T.sblock_alloc_buffer((batch, seq, n), "float32")  # a block buffer, as dlight expects
        for b, i, j, r in T.grid(batch, seq, n, k):
            with T.sblock("matmul_nt"):
                vb, vi, vj, vr = T.axis.remap("SSSR", [b, i, j, r])
                with T.init():
                    acc[vb, vi, vj] = T.float32(0)
                acc[vb, vi, vj] = acc[vb, vi, vj] + T.Cast("float32", x[vb, vi, vr]) * T.Cast(
                    "float32", w[vj, vr])
        for b, i, j in T.grid(batch, seq, n):
            with T.sblock("epilogue"):
                vb, vi, vj = T.axis.remap("SSS", [b, i, j])
                out[vb, vi, vj] = finish(acc[vb, vi, vj], bias, res, gamma, vb, vi, vj)

    # One signature per epilogue, as `make_dense_kernel`; only the one asked for is parsed.
    if residual is None:
        @T.prim_func(private=True, s_tir=True)
        def gpu_dense_plain(var_x: T.handle, var_w: T.handle, var_bias: T.handle,
                            var_out: T.handle):
            T.func_attr({"op_pattern": 8, "tirx.noalias": True})
            batch = T.int64()
            seq = T.int64()
            x = T.match_buffer(var_x, (batch, seq, k), dtype)
            w = T.match_buffer(var_w, (n, k), dtype)
            bias = T.match_buffer(var_bias, (n,), dtype)
            out = T.match_buffer(var_out, (batch, seq, n), dtype)
            dense_body(x, w, bias, None, None, out, batch, seq)
        return gpu_dense_plain
    elif residual == "add":
        @T.prim_func(private=True, s_tir=True)
        def gpu_dense_add(var_x: T.handle, var_w: T.handle, var_bias: T.handle,
                          var_res: T.handle, var_out: T.handle):
            T.func_attr({"op_pattern": 8, "tirx.noalias": True})
            batch = T.int64()
            seq = T.int64()
            x = T.match_buffer(var_x, (batch, seq, k), dtype)
            w = T.match_buffer(var_w, (n, k), dtype)
            bias = T.match_buffer(var_bias, (n,), dtype)
            res = T.match_buffer(var_res, (batch, seq, n), dtype)
            out = T.match_buffer(var_out, (batch, seq, n), dtype)
            dense_body(x, w, bias, res, None, out, batch, seq)
        return gpu_dense_add
    else:
        @T.prim_func(private=True, s_tir=True)
        def gpu_dense_scaled_add(var_x: T.handle, var_w: T.handle, var_bias: T.handle,
                                 var_res: T.handle, var_gamma: T.handle, var_out: T.handle):
            T.func_attr({"op_pattern": 8, "tirx.noalias": True})
            batch = T.int64()
            seq = T.int64()
            x = T.match_buffer(var_x, (batch, seq, k), dtype)
            w = T.match_buffer(var_w, (n, k), dtype)
            bias = T.match_buffer(var_bias, (n,), dtype)
            res = T.match_buffer(var_res, (batch, seq, n), dtype)
            gamma = T.match_buffer(var_gamma, (n,), dtype)
            out = T.match_buffer(var_out, (batch, seq, n), dtype)
            dense_body(x, w, bias, res, gamma, out, batch, seq)
        return gpu_dense_scaled_add


def gpu_dense(
    x: nn.Tensor,
    weight: nn.Tensor,
    bias: nn.Tensor | None,
    activation: str | None = None,
    residual: nn.Tensor | None = None,
    gamma: nn.Tensor | None = None,
) -> nn.Tensor:
    """`cpu_dense`'s contract for the GPU (`make_gpu_dense_kernel`), in `x`'s dtype."""
    n = int(weight.shape[0])
    return _call_dense(lambda k, mode: make_gpu_dense_kernel(k, n, x.dtype, activation, mode),
                       "gpu_dense", x, weight, n, bias, residual, gamma, x.dtype)
