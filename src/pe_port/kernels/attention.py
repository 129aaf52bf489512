"""Attention kernels: `cpu_attention` (fused softmax attention on packed keys) and
`gpu_flash_attention` (flash attention with an online softmax), both TIR.

Both take q, k, v `[b, s, heads, head_dim]` as the RoPE kernel writes them and return
`[b, s_q, heads * head_dim]` with the heads merged: the out-projection reads it as it is.
Queries and keys may differ in number (the attention pool has one query).

Both take `causal`: query `i` then sees keys `0..i` only (the text tower's mask, PyTorch's
additive `-inf` above the diagonal). A masked key gets weight exactly 0, as `exp(-inf)` gives
PyTorch, so keys after a query cannot move its output by a single bit. A switch, not a second
kernel: the masked kernel differs in which keys a row sees (`_visible`) and in the keys a CPU
task walks, nothing else, and one kernel keeps one place to get the indexing right.

The GPU kernel is written with its GPU schedule in the loop nest (`blockIdx`/`threadIdx`
loops, shared and register buffers), and built by a function that takes `emulate`: with it,
the thread loops become serial loops and the GPU scratch scopes become plain memory, so the same
kernel runs on the CPU and the parity suite checks its indexing and arithmetic on a machine
without a GPU. A thread loop never spans a step that needs another thread's data: each such step
is its own sibling thread loop (TVM puts the barrier between them), which is also what makes the
serial emulation exact. Scratch buffers are declared once per thread block (in a `T.sblock`
under the `blockIdx` loop) and indexed by the thread they belong to; TVM's
`CompactBufferAllocation` shrinks them to one thread's registers (or the block's shared tile)
when it lowers for the GPU. (Declared outside any block, they became global-memory arguments.)
"""

from __future__ import annotations

import functools

from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op
from tvm.script import tirx as T

from pe_port.kernels.common import LOG2E, NEG_LARGE, exp_nonpositive
from pe_port.kernels.isa import VectorIsa
from pe_port.kernels.tvmscript import quick_frame_inspection

# Flash attention: queries per thread block (one per thread) and keys per shared-memory tile.
QUERY_ROWS = 64
# 32 keys made ptxas spill at head size 64 (255 registers); 16 need 190 and no spill. At head
# size 96 (the G14 towers) 16 keys spill 52 bytes (8 keys spilled more).
KEY_TILE = 16



def _visible(key, query, keys, causal: bool):
    """Whether `query` attends to `key`: every real key, or with `causal` those up to `query`."""
    return T.And(key < keys, key <= query) if causal else key < keys


# ---- CPU --------------------------------------------------------------------------------------

def key_chunk(isa: VectorIsa) -> int:
    """Keys per chunk of the scores: one row of a register tile (AVX-512 64, AVX2 16, NEON
    16); the packed keys are padded to a multiple."""
    return isa.tile_vectors * isa.lanes


def attention_tile(head_dim: int, isa: VectorIsa) -> tuple[int, int]:
    """(rows, dcols): query rows per task and output columns per pass over the values.

    The scores tile `rows x key_chunk` and the output tile `rows x dcols` each fill at most
    `isa.accumulators` registers; 6 rows, so each key or value vector loaded feeds 6 FMAs.
    `dcols` is the widest divisor of `head_dim` that fits: on AVX-512 a head of 64 in one
    pass over the values, on AVX2 in four passes of 16 (the scores row stays in L1).
    """
    rows = max(1, min(6, isa.accumulators // isa.tile_vectors))
    widest = max(1, isa.accumulators // rows) * isa.lanes
    dcols = next(d for d in range(min(widest, head_dim), 0, -1) if head_dim % d == 0)
    return rows, dcols


@functools.cache  # one parse per head shape, not one per call site
@quick_frame_inspection()
def make_pack_keys_kernel(heads: int, head_dim: int, chunk: int):
    """`k [b, s, h, d]` to `[b, h, s_pad / C, d, C]` (C = `chunk`), zero past `s`.

    Each chunk of C keys is one contiguous block, read front to back by the scores loop; with
    keys strided by `s_pad` instead, every head dimension was a separate memory stream.
    Written as TIR, not TE: emit_te orders the symbolic shape arguments by hash, which made
    the module (and so the compile-cache key) differ between otherwise identical builds.
    """

    @T.prim_func(private=True, s_tir=True)
    def pack(var_k: T.handle, var_packed: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True})
        n_batch = T.int64()
        n_seq = T.int64()
        chunks = T.int64()
        keys = T.match_buffer(var_k, (n_batch, n_seq, heads, head_dim), "float32")
        packed = T.match_buffer(var_packed, (n_batch, heads, chunks, head_dim, chunk),
                                "float32")
        for b, h, c, d, j in T.grid(n_batch, heads, chunks, head_dim, chunk):
            with T.sblock("pack_keys"):
                vb, vh, vc, vd, vj = T.axis.remap("SSSSS", [b, h, c, d, j])
                packed[vb, vh, vc, vd, vj] = T.if_then_else(
                    vc * chunk + vj < n_seq,
                    keys[vb, T.min(vc * chunk + vj, n_seq - 1), vh, vd],
                    T.float32(0),
                )

    return pack


def pack_keys(k: nn.Tensor, chunk: int) -> nn.Tensor:
    """The keys in the chunked layout `cpu_attention` reads (`make_pack_keys_kernel`)."""
    batch, seq, heads, head_dim = k.shape
    heads, head_dim = int(heads), int(head_dim)
    chunks = (seq + chunk - 1) // chunk
    return op.tensor_ir_op(
        make_pack_keys_kernel(heads, head_dim, chunk), "pack_keys", args=[k],
        out=nn.Tensor.placeholder((batch, heads, chunks, head_dim, chunk), "float32"))


@functools.cache  # one parse per head shape, scale and mask
@quick_frame_inspection()
def make_attention_kernel(heads: int, head_dim: int, scale: float, causal: bool,
                          isa: VectorIsa):
    """`softmax(q k^T * scale) v` per head, for `rows` queries of one head per parallel task.

    Layout: q and v `[b, s, h, d]` as the RoPE kernel writes them (a head's values are read
    in place, one contiguous row of `d` per key), keys packed in chunks by `pack_keys`, output
    `[b, s_q, h * d]` with the heads already merged (a reshape of symbolic shapes would be a
    copy). Queries and keys may differ in number (the attention pool has one query).
    The task's scores row (`rows x s_pad`) stays in cache: scores, then max and exponentials
    (one vector at a time), then the value sum (in `head_dim / dcols` passes), then one
    division per output element. Tile sizes from the target's vector unit: `attention_tile`.

    `causal`: masked scores stay out of the max and become exactly 0 after the exponential
    (the clamped `exp_nonpositive` alone would leave 2e-38); a task stops after the last key
    its rows see, so the masked kernel does about half the work at a full context.
    """
    rows, dcols = attention_tile(head_dim, isa)
    lanes = isa.lanes
    per_chunk = key_chunk(isa)  # keys per chunk of the packed layout (`pack_keys`)

    def seen_chunks(chunks, r0):
        """The key chunks the task of rows `r0..r0 + rows - 1` reads."""
        return T.min(chunks, (r0 + rows - 1) // per_chunk + 1) if causal else chunks

    def seen_keys(keys, r0):
        return T.min(keys, r0 + rows) if causal else keys

    def weight(value, key, query, keys):
        """`value`, the exponential of a score; exactly 0 where the causal mask hides the key."""
        if not causal:
            return value
        return T.if_then_else(_visible(key, query, keys, causal), value, T.float32(0))

    @T.prim_func(private=True)
    def attention(var_q: T.handle, var_kt: T.handle, var_v: T.handle, var_out: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True, "tirx.is_scheduled": True})
        batch = T.int64()
        seq = T.int64()
        keys = T.int64()
        chunks = T.int64()
        q = T.match_buffer(var_q, (batch, seq, heads, head_dim), "float32")
        kt = T.match_buffer(var_kt, (batch, heads, chunks, head_dim, per_chunk), "float32")
        v = T.match_buffer(var_v, (batch, keys, heads, head_dim), "float32")
        out = T.match_buffer(var_out, (batch, seq, heads * head_dim), "float32")
        row_tiles: T.let[T.int64] = (seq + rows - 1) // rows
        for task in T.parallel(batch * heads * row_tiles):
            # task -> (image b, head h, first query row r0); rows past `seq` read row seq - 1.
            # Bound with `T.let`: a plain name would be a one-element buffer allocated per task.
            b: T.let[T.int64] = task // (heads * row_tiles)
            h: T.let[T.int64] = task // row_tiles % heads
            r0: T.let[T.int64] = task % row_tiles * rows
            scores = T.alloc_buffer((rows, chunks * per_chunk), "float32")
            tile = T.alloc_buffer((rows, per_chunk), "float32")
            acc = T.alloc_buffer((rows, dcols), "float32")
            row_max = T.alloc_buffer((rows,), "float32")
            row_sum = T.alloc_buffer((rows,), "float32")
            for chunk in range(seen_chunks(chunks, r0)):
                for i in T.unroll(rows):
                    for j in T.vectorized(per_chunk):
                        tile[i, j] = T.float32(0)
                for d in range(head_dim):
                    for i in T.unroll(rows):
                        for j in T.vectorized(per_chunk):
                            tile[i, j] = tile[i, j] + q[b, T.min(r0 + i, seq - 1), h, d] * kt[
                                b, h, chunk, d, j]
                for i in T.unroll(rows):
                    for j in T.vectorized(per_chunk):
                        # Padded keys get a score that vanishes in the softmax (exp < 2e-38).
                        scores[i, chunk * per_chunk + j] = T.if_then_else(
                            _visible(chunk * per_chunk + j, r0 + i, keys, causal), tile[i, j],
                            T.float32(NEG_LARGE))
            for i in range(rows):
                # Per row: a vector of running maxima and sums, then one horizontal step.
                lane_max = T.alloc_buffer((lanes,), "float32")
                lane_sum = T.alloc_buffer((lanes,), "float32")
                for j in T.vectorized(lanes):
                    lane_max[j] = T.float32(NEG_LARGE)
                    lane_sum[j] = T.float32(0)
                for chunk in range(seen_chunks(chunks, r0) * per_chunk // lanes):
                    for j in T.vectorized(lanes):
                        lane_max[j] = T.max(lane_max[j], scores[i, chunk * lanes + j])
                row_max[i] = T.float32(NEG_LARGE)
                for j in range(lanes):
                    row_max[i] = T.max(row_max[i], lane_max[j])
                for chunk in range(seen_chunks(chunks, r0) * per_chunk // lanes):
                    for j in T.vectorized(lanes):
                        scores[i, chunk * lanes + j] = weight(exp_nonpositive(
                            (scores[i, chunk * lanes + j] - row_max[i]) * T.float32(scale)),
                            chunk * lanes + j, r0 + i, keys)
                        lane_sum[j] = lane_sum[j] + scores[i, chunk * lanes + j]
                row_sum[i] = T.float32(0)
                for j in range(lanes):
                    row_sum[i] = row_sum[i] + lane_sum[j]
            for part in range(head_dim // dcols):
                for i in T.unroll(rows):
                    for d in T.vectorized(dcols):
                        acc[i, d] = T.float32(0)
                for key in range(seen_keys(keys, r0)):
                    for i in T.unroll(rows):
                        for d in T.vectorized(dcols):
                            acc[i, d] = acc[i, d] + scores[i, key] * v[b, key, h,
                                                                       part * dcols + d]
                for i in T.unroll(rows):
                    if r0 + i < seq:
                        for d in T.vectorized(dcols):
                            out[b, r0 + i, h * head_dim + part * dcols + d] = (
                                acc[i, d] / row_sum[i])

    return attention


def cpu_attention(q: nn.Tensor, k: nn.Tensor, v: nn.Tensor, scale: float,
                  causal: bool = False, *, isa: VectorIsa) -> nn.Tensor:
    """Fused softmax attention over `[b, s, heads, head_dim]` inputs; `[b, s_q, width]` out,
    tiled for `isa`."""
    batch, seq, heads, head_dim = q.shape
    kernel = make_attention_kernel(int(heads), int(head_dim), scale, causal, isa)
    name = "causal_attention" if causal else "attention"
    return op.tensor_ir_op(kernel, name, args=[q, pack_keys(k, key_chunk(isa)), v],
                           out=nn.Tensor.placeholder((batch, seq, heads * head_dim), "float32"))


# ---- GPU --------------------------------------------------------------------------------------

@functools.cache  # one parse per head shape, scale, dtype and mask
@quick_frame_inspection()
def make_flash_attention_kernel(heads: int, head_dim: int, scale: float, dtype: str,
                                emulate: bool = False, causal: bool = False):
    """`out[b, i, h*d:(h+1)*d] = softmax_j(q_i . k_j * scale) v_j`; a block per (b, h, 64 rows).

    Why a kernel: the unfused graph writes the `[b, h, s, s]` score matrix to memory, reads it
    for the softmax and again for the value sum; here the scores of a tile of keys live in
    registers only (FlashAttention's online softmax). Each thread owns one query row: the row
    (pre-scaled by `scale * log2 e`, so exp2 is one instruction), its running max and sum, and
    its output accumulator, all float32 whatever the activation dtype. The block walks the keys
    `KEY_TILE` at a time: the threads load the tile's k and v into shared memory together, then
    each thread folds the tile into its row, rescaling what it has by `2^(old max - new max)`.

    Layout: q, k, v `[b, s, h, d]` as the RoPE kernel writes them, output `[b, s_q, h * d]`
    with the heads merged. Queries and keys may differ in number (the attention pool has one
    query); the query rows and keys past the end read the last valid one and are dropped.

    `causal`: a masked key scores `NEG_LARGE` like a padded one, and `exp2(NEG_LARGE - max)`
    is exactly 0. Key 0 is in the first tile and seen by every row, so a row's max is a real
    score from then on. Tiles are not skipped: at the text tower's 32-72 tokens a 64-row block
    sees (nearly) every key.
    """
    width = heads * head_dim
    q_scale = T.float32(scale * LOG2E)  # scores in log2 units: exp2 is one instruction
    loads_per_thread = (KEY_TILE * head_dim + QUERY_ROWS - 1) // QUERY_ROWS
    local = "global" if emulate else "local"
    shared = "global" if emulate else "shared"

    def threads(extent, tag: str):
        return T.serial(extent) if emulate else T.thread_binding(extent, thread=tag)

    def unrolled(extent):
        """Unrolled on the GPU (registers need constant indices); a plain loop when emulated,
        which LLVM would otherwise spend minutes on."""
        return T.serial(extent) if emulate else T.unroll(extent)

    def query_tiles(seq):
        return (seq + QUERY_ROWS - 1) // QUERY_ROWS

    def image(task, seq):
        return task // (heads * query_tiles(seq))

    def head(task, seq):
        return task // query_tiles(seq) % heads

    def query_row(task, seq, tx):
        return task % query_tiles(seq) * QUERY_ROWS + tx

    def tile_entry(step, tx):
        """The entry of the `[KEY_TILE, head_dim]` tile that thread `tx` loads at `step`."""
        return step * QUERY_ROWS + tx

    def load(src, task, seq, tile, keys, step, tx):
        """Entry `tile_entry(step, tx)` of key tile `tile` of `src` (k or v), as float32."""
        entry = tile_entry(step, tx)
        key = T.min(tile * KEY_TILE + entry // head_dim, keys - 1)
        return T.Cast("float32", src[image(task, seq), key, head(task, seq), entry % head_dim])

    @T.prim_func(private=True, s_tir=True)
    def flash_attention(var_q: T.handle, var_k: T.handle, var_v: T.handle, var_out: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True, "tirx.is_scheduled": True})
        batch = T.int64()
        seq = T.int64()
        keys = T.int64()
        q = T.match_buffer(var_q, (batch, seq, heads, head_dim), dtype)
        k = T.match_buffer(var_k, (batch, keys, heads, head_dim), dtype)
        v = T.match_buffer(var_v, (batch, keys, heads, head_dim), dtype)
        out = T.match_buffer(var_out, (batch, seq, width), dtype)
        for task in threads(batch * heads * query_tiles(seq), "blockIdx.x"):
            # A block of its own so that TVM sizes the scratch buffers per thread / per block.
            with T.sblock("attention_tile"):
                T.reads(q[0:batch, 0:seq, 0:heads, 0:head_dim],
                        k[0:batch, 0:keys, 0:heads, 0:head_dim],
                        v[0:batch, 0:keys, 0:heads, 0:head_dim])
                T.writes(out[0:batch, 0:seq, 0:width])
                query = T.alloc_buffer((QUERY_ROWS, head_dim), "float32", scope=local)
                acc = T.alloc_buffer((QUERY_ROWS, head_dim), "float32", scope=local)
                scores = T.alloc_buffer((QUERY_ROWS, KEY_TILE), "float32", scope=local)
                row_max = T.alloc_buffer((QUERY_ROWS,), "float32", scope=local)
                row_sum = T.alloc_buffer((QUERY_ROWS,), "float32", scope=local)
                tile_max = T.alloc_buffer((QUERY_ROWS,), "float32", scope=local)
                k_tile = T.alloc_buffer((KEY_TILE, head_dim), "float32", scope=shared)
                v_tile = T.alloc_buffer((KEY_TILE, head_dim), "float32", scope=shared)
                for tx in threads(QUERY_ROWS, "threadIdx.x"):
                    for c in unrolled(head_dim):
                        row = T.min(query_row(task, seq, tx), seq - 1)
                        query[tx, c] = T.Cast("float32", q[image(task, seq), row,
                                                           head(task, seq), c]) * q_scale
                        acc[tx, c] = T.float32(0)
                    row_max[tx] = T.float32(NEG_LARGE)
                    row_sum[tx] = T.float32(0)
                for tile in range((keys + KEY_TILE - 1) // KEY_TILE):
                    # Together: the tile's keys and values into shared memory (coalesced rows).
                    for tx in threads(QUERY_ROWS, "threadIdx.x"):
                        for step in range(loads_per_thread):
                            if tile_entry(step, tx) < KEY_TILE * head_dim:
                                entry = tile_entry(step, tx)
                                k_tile[entry // head_dim, entry % head_dim] = load(
                                    k, task, seq, tile, keys, step, tx)
                                v_tile[entry // head_dim, entry % head_dim] = load(
                                    v, task, seq, tile, keys, step, tx)
                    # Alone: each thread folds the tile into its own query row.
                    for tx in threads(QUERY_ROWS, "threadIdx.x"):
                        tile_max[tx] = row_max[tx]
                        for j in unrolled(KEY_TILE):
                            scores[tx, j] = T.float32(0)
                            for c in unrolled(head_dim):
                                scores[tx, j] = scores[tx, j] + query[tx, c] * k_tile[j, c]
                            scores[tx, j] = T.if_then_else(
                                _visible(tile * KEY_TILE + j, query_row(task, seq, tx), keys,
                                         causal), scores[tx, j], T.float32(NEG_LARGE))
                            tile_max[tx] = T.max(tile_max[tx], scores[tx, j])
                        # What the row holds was summed against the old max: rescale it.
                        row_sum[tx] = row_sum[tx] * T.exp2(row_max[tx] - tile_max[tx])
                        for c in unrolled(head_dim):
                            acc[tx, c] = acc[tx, c] * T.exp2(row_max[tx] - tile_max[tx])
                        row_max[tx] = tile_max[tx]
                        for j in unrolled(KEY_TILE):
                            scores[tx, j] = T.exp2(scores[tx, j] - row_max[tx])
                            row_sum[tx] = row_sum[tx] + scores[tx, j]
                            for c in unrolled(head_dim):
                                acc[tx, c] = acc[tx, c] + scores[tx, j] * v_tile[j, c]
                for tx in threads(QUERY_ROWS, "threadIdx.x"):
                    if query_row(task, seq, tx) < seq:
                        for c in unrolled(head_dim):
                            out[image(task, seq), query_row(task, seq, tx),
                                head(task, seq) * head_dim + c] = T.Cast(
                                dtype, acc[tx, c] / row_sum[tx])

    return flash_attention


def gpu_flash_attention(q: nn.Tensor, k: nn.Tensor, v: nn.Tensor, scale: float,
                        emulate: bool = False, causal: bool = False) -> nn.Tensor:
    """Flash attention over `[b, s, heads, head_dim]` inputs; `[b, s_q, heads * head_dim]` out."""
    batch, seq, heads, head_dim = q.shape
    kernel = make_flash_attention_kernel(int(heads), int(head_dim), scale, q.dtype, emulate,
                                         causal)
    name = "causal_flash_attention" if causal else "flash_attention"
    return op.tensor_ir_op(kernel, name, args=[q, k, v],
                           out=nn.Tensor.placeholder((batch, seq, heads * head_dim), q.dtype))
