"""The GPU fast path's hand-written kernel: flash attention (TIR), in a form the CPU can check.

Every kernel here is written with its GPU schedule in the loop nest (`blockIdx`/`threadIdx`
loops, shared and register buffers), and built by a function that takes `emulate`: with it,
the thread loops become serial loops and the GPU scratch scopes become plain memory, so the same
kernel runs on the CPU and the parity suite checks its indexing and arithmetic on a machine
without a GPU. A thread loop never spans a step that needs another thread's data: each such step
is its own sibling thread loop (TVM puts the barrier between them), which is also what makes the
serial emulation exact. Scratch buffers are declared once per thread block (in a `T.sblock`
under the `blockIdx` loop) and indexed by the thread they belong to; TVM's
`CompactBufferAllocation` shrinks them to one thread's registers (or the block's shared tile)
when it lowers for the GPU. (Declared outside any block, they became global-memory arguments.)
The matmul schedules are dlight's, chosen in `gpu_schedule.py`.
"""

from __future__ import annotations

from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op
from tvm.script import tirx as T

# Flash attention: queries per thread block (one per thread) and keys per shared-memory tile.
QUERY_ROWS = 64
# 32 keys made ptxas spill at head size 64 (255 registers); 16 need 190 and no spill. At head
# size 96 (the G14 towers) 16 keys spill 52 bytes (8 keys spilled more).
KEY_TILE = 16
LOG2E = 1.4426950408889634
NEG_LARGE = -3.0e38  # a finite stand-in for -inf: initial maxima, keys past the end


def make_flash_attention_kernel(heads: int, head_dim: int, scale: float, dtype: str,
                                emulate: bool = False):
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
                            scores[tx, j] = T.if_then_else(tile * KEY_TILE + j < keys,
                                                           scores[tx, j], T.float32(NEG_LARGE))
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


def attention(q: nn.Tensor, k: nn.Tensor, v: nn.Tensor, scale: float,
              emulate: bool = False) -> nn.Tensor:
    """Flash attention over `[b, s, heads, head_dim]` inputs; `[b, s_q, heads * head_dim]` out."""
    batch, seq, heads, head_dim = q.shape
    kernel = make_flash_attention_kernel(int(heads), int(head_dim), scale, q.dtype, emulate)
    return op.tensor_ir_op(kernel, "flash_attention", args=[q, k, v],
                           out=nn.Tensor.placeholder((batch, seq, heads * head_dim), q.dtype))
