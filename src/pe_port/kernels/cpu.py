"""The CPU fast path: matmuls on packed weights with fused epilogues, and fused attention (TIR).

TVM's default CPU pipeline leaves every kernel unscheduled (scalar loops, one thread). These
kernels are written with their schedule in the loop nest itself: a register tile of `rows x cols`
outputs accumulates over the reduction while LLVM keeps the tile in vector registers, tiles run in
parallel, and the row count (batch x tokens) stays symbolic. Rows past the end are computed on a
clamped (valid) input row and never stored, so no branch sits in the inner loop.
"""

from __future__ import annotations

import math

from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op
from tvm.script import tirx as T

# Keys per chunk of the attention scores (4 vectors); key storage is padded to a multiple.
KEY_CHUNK = 64
LOG2E = 1.4426950408889634
NEG_LARGE = -3.0e38  # a finite stand-in for -inf: padded keys, initial maxima
LN2 = 0.6931471805599453


def dense_tile(n: int) -> tuple[int, int]:
    """Register tile (rows, cols) for an `n`-column output: 24 or 16 accumulators of 16 lanes."""
    cols = next(c for c in (64, 32, 16, 8, 4, 2, 1) if n % c == 0)
    return (6 if cols == 64 else 8), cols


def pack_weight(weight: nn.Tensor) -> nn.Tensor:
    """`[n, k]` (PyTorch's Linear layout) to `[n / cols, k, cols]`: each column tile contiguous.

    A pure function of a parameter, so `LiftTransformParams` moves it out of the forward pass:
    it runs once, when the weights are loaded.
    """
    n, k = (int(d) for d in weight.shape)
    _, cols = dense_tile(n)
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
    tail = poly * t * _exp_nonpositive(-magnitude * magnitude)
    return T.if_then_else(x < T.float32(0), tail - T.float32(1.0), T.float32(1.0) - tail)


def make_dense_kernel(k: int, n: int, activation: str | None, residual: str | None):
    """`out[b, s, n] = epilogue(x[b, s, k] @ w[n, k]^T + bias[n])` on packed `w [n/cols, k, cols]`.

    `activation`: None or "gelu". `residual`: None, "add" (`out = res + y`) or "scaled_add"
    (`out = res + gamma * y`, LayerScale fused into the residual branch). The kernel walks the
    `batch x seq` rows as one axis but takes and returns `[batch, seq, ...]` tensors: reshaping
    around it would cost a copy each time, since TVM cannot prove that a reshape of symbolic
    shapes is free.
    """
    rows, cols = dense_tile(n)
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

    @T.macro
    def dense_body(x, w, bias, res, gamma, out, batch, seq):
        # x, res and out are viewed as the `[batch * seq, features]` matrices they are in
        # memory: indexed `[b, s, c]`, every row index divides by the symbolic `seq`, which
        # kept LLVM from vectorising the stores (3x slower).
        m_total = batch * seq
        row_tiles = (m_total + rows - 1) // rows
        # Column-tile major: the tasks a thread runs in a row share one weight panel
        # `[k, cols]`, which stays in L2 while the thread walks down the rows of x.
        for tile in T.parallel(col_tiles * row_tiles):
            acc = T.alloc_buffer((rows, cols), "float32", scope="local")
            for i in T.unroll(rows):
                for j in T.vectorized(cols):
                    acc[i, j] = T.float32(0)
            for kk in range(k):
                for i in T.unroll(rows):
                    for j in T.vectorized(cols):
                        acc[i, j] = acc[i, j] + x[
                            T.min(tile % row_tiles * rows + i, m_total - 1), kk
                        ] * w[tile // row_tiles, kk, j]
            for i in T.unroll(rows):
                if tile % row_tiles * rows + i < m_total:
                    for j in T.vectorized(cols):
                        out[tile % row_tiles * rows + i, tile // row_tiles * cols + j] = finish(
                            acc[i, j], bias, res, gamma, tile % row_tiles * rows + i,
                            tile // row_tiles * cols + j)

    # One signature per epilogue: the buffers each one reads, nothing more.
    @T.prim_func(private=True)
    def dense_plain(var_x: T.handle, var_w: T.handle, var_bias: T.handle, var_out: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True})
        batch = T.int64()
        seq = T.int64()
        x_in = T.match_buffer(var_x, (batch, seq, k), "float32")
        w = T.match_buffer(var_w, (col_tiles, k, cols), "float32")
        bias = T.match_buffer(var_bias, (n,), "float32")
        out_3d = T.match_buffer(var_out, (batch, seq, n), "float32")
        x = T.decl_buffer((batch * seq, k), "float32", data=x_in.data)  # see dense_body
        out = T.decl_buffer((batch * seq, n), "float32", data=out_3d.data)
        dense_body(x, w, bias, None, None, out, batch, seq)

    @T.prim_func(private=True)
    def dense_add(var_x: T.handle, var_w: T.handle, var_bias: T.handle, var_res: T.handle,
                  var_out: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True})
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

    @T.prim_func(private=True)
    def dense_scaled_add(var_x: T.handle, var_w: T.handle, var_bias: T.handle,
                         var_res: T.handle, var_gamma: T.handle, var_out: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True})
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

    return {None: dense_plain, "add": dense_add, "scaled_add": dense_scaled_add}[residual]


def dense(
    x: nn.Tensor,
    weight: nn.Tensor,
    bias: nn.Tensor | None,
    activation: str | None = None,
    residual: nn.Tensor | None = None,
    gamma: nn.Tensor | None = None,
) -> nn.Tensor:
    """`x @ weight.T + bias`, then GELU or a (LayerScale-scaled) residual add, in one kernel.

    `x` is `[batch, seq, k]` (a `[batch, k]` input is taken as one token per image). No
    `bias` (the patch embedding, the final projection) adds zeros. `gamma` is only used with
    `residual`.
    """
    flat = x.ndim == 2
    if flat:
        x = op.unsqueeze(x, 1)
        residual = None if residual is None else op.unsqueeze(residual, 1)
    batch, seq, k = x.shape
    n = int(weight.shape[0])
    if bias is None:
        bias = op.zeros((n,), "float32")
    mode = None if residual is None else ("add" if gamma is None else "scaled_add")
    kernel = make_dense_kernel(int(k), n, activation, mode)
    args = [x, pack_weight(weight), bias]
    if residual is not None:
        args.append(residual)
    if gamma is not None:
        args.append(gamma)
    out = op.tensor_ir_op(kernel, "dense", args=args,
                          out=nn.Tensor.placeholder((batch, seq, n), "float32"))
    return op.squeeze(out, 1) if flat else out


def make_layer_norm_kernel(width: int, eps: float):
    """`(x - mean) / sqrt(var + eps) * weight + bias` over the last axis of `[b, s, width]`.

    One row per parallel task, 16 lanes at a time: the row's sum, then the sum of squared
    deviations (two passes, as PyTorch and TVM's own layer norm do), then the output. TVM's
    reduction schedule reduces the row one element at a time, three times slower.
    """
    lanes = 16
    vectors = width // lanes

    @T.prim_func(private=True)
    def layer_norm(var_x: T.handle, var_weight: T.handle, var_bias: T.handle, var_out: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True})
        batch = T.int64()
        seq = T.int64()
        x = T.match_buffer(var_x, (batch, seq, width), "float32")
        weight = T.match_buffer(var_weight, (width,), "float32")
        bias = T.match_buffer(var_bias, (width,), "float32")
        out = T.match_buffer(var_out, (batch, seq, width), "float32")
        for row in T.parallel(batch * seq):
            b = row // seq
            s = row % seq
            partial = T.alloc_buffer((lanes,), "float32", scope="local")
            stats = T.alloc_buffer((2,), "float32", scope="local")  # mean, 1 / std
            for j in T.vectorized(lanes):
                partial[j] = T.float32(0)
            for v in range(vectors):
                for j in T.vectorized(lanes):
                    partial[j] = partial[j] + x[b, s, v * lanes + j]
            stats[0] = T.float32(0)
            for j in range(lanes):
                stats[0] = stats[0] + partial[j]
            stats[0] = stats[0] / T.float32(width)
            for j in T.vectorized(lanes):
                partial[j] = T.float32(0)
            for v in range(vectors):
                for j in T.vectorized(lanes):
                    partial[j] = partial[j] + (x[b, s, v * lanes + j] - stats[0]) * (
                        x[b, s, v * lanes + j] - stats[0])
            stats[1] = T.float32(0)
            for j in range(lanes):
                stats[1] = stats[1] + partial[j]
            stats[1] = T.rsqrt(stats[1] / T.float32(width) + T.float32(eps))
            for v in range(vectors):
                for j in T.vectorized(lanes):
                    out[b, s, v * lanes + j] = (x[b, s, v * lanes + j] - stats[0]) * stats[1] * (
                        weight[v * lanes + j]) + bias[v * lanes + j]

    return layer_norm


def layer_norm_fits(width: int) -> bool:
    """Whether `layer_norm` takes this width: whole 16-lane vectors."""
    return width % 16 == 0


def layer_norm(x: nn.Tensor, weight: nn.Tensor, bias: nn.Tensor, eps: float) -> nn.Tensor:
    """Layer norm over the last axis of `[batch, seq, width]` (width a multiple of 16)."""
    kernel = make_layer_norm_kernel(int(x.shape[-1]), eps)
    return op.tensor_ir_op(kernel, "layer_norm", args=[x, weight, bias],
                           out=nn.Tensor.placeholder(x.shape, "float32"))


def _exp_nonpositive(x):
    """`exp(x)` for `x <= 0`, vectorisable: `2^n * 2^f` with a degree-6 polynomial for `2^f`.

    LLVM lowers `exp` to a scalar libm call per element; softmax over every (query, key) pair
    needs millions per image, so the kernel uses this inline form (relative error < 2e-7).
    Inputs below -87 are clamped, where the result (< 2e-38) is negligible next to the row's
    maximum term, 1.
    """
    t = T.max(x, T.float32(-87.0)) * T.float32(LOG2E)
    whole = T.floor(t + T.float32(0.5))
    y = (t - whole) * T.float32(LN2)  # |y| <= ln(2) / 2
    poly = T.float32(1.0 / 720.0)
    for coeff in (1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0):
        poly = poly * y + T.float32(coeff)
    exponent_bits = T.shift_left(T.Cast("int32", whole) + 127, 23)
    return poly * T.reinterpret("float32", exponent_bits)


def attention_rows(head_dim: int) -> int:
    """Query rows per task: the output tile `rows x head_dim` must fit ~24 vector registers."""
    return max(1, min(6, 24 // max(1, head_dim // 16)))


def pack_keys(k: nn.Tensor) -> nn.Tensor:
    """`k [b, s, h, d]` to `[b, h, s_pad / C, d, C]` (C = KEY_CHUNK), zero past `s`.

    Each chunk of C keys is one contiguous block, read front to back by the scores loop; with
    keys strided by `s_pad` instead, every head dimension was a separate memory stream.
    """

    batch, seq, heads, head_dim = k.shape
    head_dim = int(head_dim)
    heads = int(heads)

    # Written as TIR, not TE: emit_te orders the symbolic shape arguments by hash, which made
    # the module (and so the compile-cache key) differ between otherwise identical builds.
    @T.prim_func(private=True, s_tir=True)
    def pack(var_k: T.handle, var_packed: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True})
        n_batch = T.int64()
        n_seq = T.int64()
        chunks = T.int64()
        keys = T.match_buffer(var_k, (n_batch, n_seq, heads, head_dim), "float32")
        packed = T.match_buffer(var_packed, (n_batch, heads, chunks, head_dim, KEY_CHUNK),
                                "float32")
        for b, h, c, d, j in T.grid(n_batch, heads, chunks, head_dim, KEY_CHUNK):
            with T.sblock("pack_keys"):
                vb, vh, vc, vd, vj = T.axis.remap("SSSSS", [b, h, c, d, j])
                packed[vb, vh, vc, vd, vj] = T.if_then_else(
                    vc * KEY_CHUNK + vj < n_seq,
                    keys[vb, T.min(vc * KEY_CHUNK + vj, n_seq - 1), vh, vd],
                    T.float32(0),
                )

    chunks = (seq + KEY_CHUNK - 1) // KEY_CHUNK
    return op.tensor_ir_op(
        pack, "pack_keys", args=[k],
        out=nn.Tensor.placeholder((batch, heads, chunks, head_dim, KEY_CHUNK), "float32"))


def make_attention_kernel(heads: int, head_dim: int, scale: float):
    """`softmax(q k^T * scale) v` per head, for `rows` queries of one head per parallel task.

    Layout: q and v `[b, s, h, d]` as the RoPE kernel writes them (a head's values are read
    in place, one contiguous row of `d` per key), keys packed in chunks by `pack_keys`, output
    `[b, s_q, h * d]` with the heads already merged (a reshape of symbolic shapes would be a
    copy). Queries and keys may differ in number (the attention pool has one query).
    The task's scores row (`rows x s_pad`) stays in cache: scores, then max and exponentials
    (16 lanes at a time), then the value sum, then one division per output row.
    """
    rows = attention_rows(head_dim)
    lanes = 16

    @T.prim_func(private=True)
    def attention(var_q: T.handle, var_kt: T.handle, var_v: T.handle, var_out: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True})
        batch = T.int64()
        seq = T.int64()
        keys = T.int64()
        chunks = T.int64()
        q = T.match_buffer(var_q, (batch, seq, heads, head_dim), "float32")
        kt = T.match_buffer(var_kt, (batch, heads, chunks, head_dim, KEY_CHUNK), "float32")
        v = T.match_buffer(var_v, (batch, keys, heads, head_dim), "float32")
        out = T.match_buffer(var_out, (batch, seq, heads * head_dim), "float32")
        row_tiles = (seq + rows - 1) // rows
        for task in T.parallel(batch * heads * row_tiles):
            # task -> (image b, head h, first query row r0); rows past `seq` read row seq - 1.
            b = task // (heads * row_tiles)
            h = task // row_tiles % heads
            r0 = task % row_tiles * rows
            scores = T.alloc_buffer((rows, chunks * KEY_CHUNK), "float32")
            tile = T.alloc_buffer((rows, KEY_CHUNK), "float32", scope="local")
            acc = T.alloc_buffer((rows, head_dim), "float32", scope="local")
            row_max = T.alloc_buffer((rows,), "float32", scope="local")
            row_sum = T.alloc_buffer((rows,), "float32", scope="local")
            for chunk in range(chunks):
                for i in T.unroll(rows):
                    for j in T.vectorized(KEY_CHUNK):
                        tile[i, j] = T.float32(0)
                for d in range(head_dim):
                    for i in T.unroll(rows):
                        for j in T.vectorized(KEY_CHUNK):
                            tile[i, j] = tile[i, j] + q[b, T.min(r0 + i, seq - 1), h, d] * kt[
                                b, h, chunk, d, j]
                for i in T.unroll(rows):
                    for j in T.vectorized(KEY_CHUNK):
                        # Padded keys get a score that vanishes in the softmax (exp < 2e-38).
                        scores[i, chunk * KEY_CHUNK + j] = T.if_then_else(
                            chunk * KEY_CHUNK + j < keys, tile[i, j], T.float32(NEG_LARGE))
            for i in range(rows):
                # Per row: 16-lane running max and sum in registers, then one horizontal step.
                lane_max = T.alloc_buffer((lanes,), "float32", scope="local")
                lane_sum = T.alloc_buffer((lanes,), "float32", scope="local")
                for j in T.vectorized(lanes):
                    lane_max[j] = T.float32(NEG_LARGE)
                    lane_sum[j] = T.float32(0)
                for chunk in range(chunks * KEY_CHUNK // lanes):
                    for j in T.vectorized(lanes):
                        lane_max[j] = T.max(lane_max[j], scores[i, chunk * lanes + j])
                row_max[i] = T.float32(NEG_LARGE)
                for j in range(lanes):
                    row_max[i] = T.max(row_max[i], lane_max[j])
                for chunk in range(chunks * KEY_CHUNK // lanes):
                    for j in T.vectorized(lanes):
                        scores[i, chunk * lanes + j] = _exp_nonpositive(
                            (scores[i, chunk * lanes + j] - row_max[i]) * T.float32(scale))
                        lane_sum[j] = lane_sum[j] + scores[i, chunk * lanes + j]
                row_sum[i] = T.float32(0)
                for j in range(lanes):
                    row_sum[i] = row_sum[i] + lane_sum[j]
            for i in T.unroll(rows):
                for d in T.vectorized(head_dim):
                    acc[i, d] = T.float32(0)
            for key in range(keys):
                for i in T.unroll(rows):
                    for d in T.vectorized(head_dim):
                        acc[i, d] = acc[i, d] + scores[i, key] * v[b, key, h, d]
            for i in T.unroll(rows):
                if r0 + i < seq:
                    for d in T.vectorized(head_dim):
                        out[b, r0 + i, h * head_dim + d] = acc[i, d] / row_sum[i]

    return attention


def attention(q: nn.Tensor, k: nn.Tensor, v: nn.Tensor, scale: float) -> nn.Tensor:
    """Fused softmax attention over `[b, s, heads, head_dim]` inputs; `[b, s_q, width]` out."""
    batch, seq, heads, head_dim = q.shape
    kernel = make_attention_kernel(int(heads), int(head_dim), scale)
    return op.tensor_ir_op(kernel, "attention", args=[q, pack_keys(k), v],
                           out=nn.Tensor.placeholder((batch, seq, heads * head_dim), "float32"))
