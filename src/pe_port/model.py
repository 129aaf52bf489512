"""The PE towers as Relax `nn.Module`s, one per module of the original `pe.py`.

Parameter names equal the official state-dict keys (`transformer.resblocks.0.attn.in_proj_weight`,
`attn_pool.probe`, `token_embedding.weight`, ...), so loading a checkpoint is a lookup, not a
rename table. The batch, the patch grid and the text length are symbolic: one compiled function
serves every batch size, every image size that is a multiple of the patch, and every text up to
the context length. The text tower runs the vision tower's blocks with a causal mask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tvm import relax, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op

from pe_port import ops
from pe_port.config import PEConfig
from pe_port.kernels import resize_posemb, rope_qkv

if TYPE_CHECKING:
    from pe_port.config import PETextConfig

LN_EPS = 1e-5


class LayerNorm(nn.Module):
    """PyTorch's `nn.LayerNorm` (elementwise affine) over the last axis, kernel from `ops`."""

    def __init__(self, width: int, eps: float, dtype: str) -> None:
        self.eps = eps
        self.weight = nn.Parameter((width,), dtype)
        self.bias = nn.Parameter((width,), dtype)

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        return ops.layer_norm(x, self.weight, self.bias, self.eps)


class LayerScale(nn.Module):
    """`x * gamma`: a learned per-channel scale on a residual branch."""

    def __init__(self, dim: int, dtype: str) -> None:
        self.gamma = nn.Parameter((dim,), dtype)

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """`c_proj(gelu(c_fc(x)))` with the exact (erf) GELU; the original's `nn.Sequential`."""

    def __init__(self, width: int, hidden: int, dtype: str) -> None:
        self.c_fc = nn.Linear(width, hidden, dtype=dtype)
        self.c_proj = nn.Linear(hidden, width, dtype=dtype)

    def forward(self, x: nn.Tensor, residual: nn.Tensor | None = None,
                gamma: nn.Tensor | None = None) -> nn.Tensor:
        """`c_proj(gelu(c_fc(x)))`; given `residual`, `residual + gamma * mlp(x)` in one pass."""
        hidden = ops.linear(x, self.c_fc.weight, self.c_fc.bias, activation="gelu")
        return ops.linear(hidden, self.c_proj.weight, self.c_proj.bias,
                          residual=residual, gamma=gamma)


class MultiheadAttention(nn.Module):
    """PyTorch's `nn.MultiheadAttention` (batch first, with biases) for a separate query."""

    def __init__(self, embed_dim: int, num_heads: int, dtype: str) -> None:
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.in_proj_weight = nn.Parameter((3 * embed_dim, embed_dim), dtype)
        self.in_proj_bias = nn.Parameter((3 * embed_dim,), dtype)
        self.out_proj = nn.Linear(embed_dim, embed_dim, dtype=dtype)

    def forward(self, query: nn.Tensor, tokens: nn.Tensor) -> nn.Tensor:
        batch, query_len, width = query.shape
        seq = tokens.shape[1]
        # The fused in-projection holds q | k | v along its rows.
        w_q, w_kv = op.split(self.in_proj_weight, [width], axis=0)
        b_q, b_kv = op.split(self.in_proj_bias, [width], axis=0)
        q = ops.linear(query, w_q, b_q)
        k, v = op.split(ops.linear(tokens, w_kv, b_kv), 2, axis=2)
        heads = (self.num_heads, self.head_dim)
        merged = ops.attention(  # [batch, query_len, width]: heads merged
            op.reshape(q, (batch, query_len, *heads)),
            op.reshape(k, (batch, seq, *heads)),
            op.reshape(v, (batch, seq, *heads)),
            scale=self.head_dim**-0.5,
        )
        return ops.linear(merged, self.out_proj.weight, self.out_proj.bias)


class AttentionPooling(nn.Module):
    """A learned probe attends over all tokens; an MLP then refines the pooled vector."""

    def __init__(self, embed_dim: int, num_heads: int, dtype: str, mlp_ratio: int = 4) -> None:
        self.probe = nn.Parameter((1, 1, embed_dim), dtype)
        self.attn = MultiheadAttention(embed_dim, num_heads, dtype)
        self.layernorm = LayerNorm(embed_dim, eps=LN_EPS, dtype=dtype)
        self.mlp = Mlp(embed_dim, embed_dim * mlp_ratio, dtype)

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        batch, _, width = x.shape
        query = op.broadcast_to(self.probe, (batch, 1, width))
        pooled = self.attn(query, x)
        return pooled + self.mlp(self.layernorm(pooled))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused q|k|v projection and 2D RoPE on q and k;
    `causal` (the text tower): token i attends to tokens 0..i only."""

    def __init__(self, config: PEConfig, dtype: str, causal: bool = False) -> None:
        width = config.width
        self.num_heads = config.heads
        self.head_dim = config.head_dim
        self.use_rope2d = config.use_rope2d
        self.use_cls_token = config.use_cls_token
        self.causal = causal
        self.in_proj_weight = nn.Parameter((3 * width, width), dtype)
        self.in_proj_bias = nn.Parameter((3 * width,), dtype)
        self.out_proj = nn.Linear(width, width, dtype=dtype)

    def split_heads(self, qkv: nn.Tensor, grid_w) -> tuple[nn.Tensor, nn.Tensor, nn.Tensor]:
        """q, k, v `[b, s, heads, head_dim]` from the fused projection, q and k rotated."""
        if self.use_rope2d:
            return rope_qkv(qkv, grid_w, self.num_heads, self.head_dim, self.use_cls_token)
        batch, seq, _ = qkv.shape
        qkv = op.reshape(qkv, (batch, seq, 3, self.num_heads, self.head_dim))
        q, k, v = op.split(qkv, 3, axis=2)
        return tuple(op.squeeze(t, 2) for t in (q, k, v))

    def forward(self, x: nn.Tensor, grid_w, residual: nn.Tensor | None = None,
                gamma: nn.Tensor | None = None) -> nn.Tensor:
        """Attention over `x`; given `residual`, `residual + gamma * attn(x)` in the last matmul."""
        qkv = ops.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = self.split_heads(qkv, grid_w)
        merged = ops.attention(q, k, v, scale=self.head_dim**-0.5,  # [batch, seq, width]
                               causal=self.causal)
        return ops.linear(merged, self.out_proj.weight, self.out_proj.bias,
                          residual=residual, gamma=gamma)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: `x += ls_1(attn(ln_1(x)))`, then `x += ls_2(mlp(ln_2(x)))`."""

    def __init__(self, config: PEConfig, dtype: str, causal: bool = False) -> None:
        width = config.width
        self.attn = SelfAttention(config, dtype, causal)
        self.ln_1 = LayerNorm(width, eps=LN_EPS, dtype=dtype)
        self.ln_2 = LayerNorm(width, eps=LN_EPS, dtype=dtype)
        self.mlp = Mlp(width, config.mlp_width, dtype)
        # Without LayerScale the original uses nn.Identity: no parameter, no multiply.
        self.ls_1 = LayerScale(width, dtype) if config.use_layer_scale else None
        self.ls_2 = LayerScale(width, dtype) if config.use_layer_scale else None

    def forward(self, x: nn.Tensor, grid_w) -> nn.Tensor:
        # The residual add and LayerScale ride in each branch's last matmul (one pass over x).
        x = self.attn(self.ln_1(x), grid_w, residual=x, gamma=_gamma(self.ls_1))
        return self.mlp(self.ln_2(x), residual=x, gamma=_gamma(self.ls_2))


def _gamma(layer_scale: LayerScale | None) -> nn.Tensor | None:
    return None if layer_scale is None else layer_scale.gamma


class Transformer(nn.Module):
    """The stack of residual blocks; `layer_idx` picks the last block run (-1: all of them)."""

    def __init__(self, config: PEConfig, dtype: str, causal: bool = False) -> None:
        self.layers = config.layers
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(config, dtype, causal) for _ in range(config.layers)]
        )

    def forward(self, x: nn.Tensor, grid_w, layer_idx: int = -1) -> nn.Tensor:
        stop_idx = (self.layers + layer_idx) % self.layers
        for block in self.resblocks[: stop_idx + 1]:
            x = block(x, grid_w)
        return x


class VisionTransformer(nn.Module):
    """The PE vision tower: patchify, embed, run the blocks, pool and project."""

    def __init__(self, config: PEConfig, dtype: str = "float32") -> None:
        width = config.width
        self.config = config
        self.dtype = dtype
        self.conv1 = nn.Conv2D(
            3, width, kernel_size=config.patch_size, stride=config.patch_size, bias=False,
            dtype=dtype,
        )
        if config.use_cls_token:
            self.class_embedding = nn.Parameter((width,), dtype)
        if config.use_abs_posemb:
            self.positional_embedding = nn.Parameter((config.num_pos, width), dtype)
        self.ln_pre = LayerNorm(width, eps=LN_EPS, dtype=dtype) if config.use_ln_pre else None
        self.transformer = Transformer(config, dtype)
        self.ln_post = LayerNorm(width, eps=LN_EPS, dtype=dtype) if config.use_ln_post else None
        if config.pool_type == "attn":
            self.attn_pool = AttentionPooling(width, config.attn_pooler_heads, dtype)
        if config.output_dim is not None:
            self.proj = nn.Parameter((width, config.output_dim), dtype)

    def sample_abs_posemb(self, grid_h, grid_w) -> nn.Tensor:
        """The position embedding `[1, tokens, width]` for a `grid_h x grid_w` grid.

        Stored for the pretrain grid; resized bilinearly for any other. When the grid is the
        pretrain one the resize is an exact identity, so one graph covers both cases.
        """
        cfg = self.config
        side = cfg.grid_size
        cls_rows = int(cfg.use_cls_token)
        pos = self.positional_embedding
        grid = op.reshape(pos if not cls_rows else op.split(pos, [1], axis=0)[1],
                          (side, side, cfg.width))
        grid = op.reshape(resize_posemb(grid, grid_h, grid_w), (grid_h * grid_w, cfg.width))
        if cls_rows:
            grid = op.concat([op.split(pos, [1], axis=0)[0], grid], dim=0)
        return op.unsqueeze(grid, 0)

    def embed(self, x: nn.Tensor) -> tuple[nn.Tensor, tirx.PrimExpr]:
        """Pixels `[b, 3, H, W]` to tokens `[b, (cls +) gh*gw, width]` after ln_pre."""
        cfg = self.config
        batch, _, height, width_px = x.shape
        grid_h, grid_w = height // cfg.patch_size, width_px // cfg.patch_size
        tokens = ops.patch_embed(x, self.conv1.weight, cfg.patch_size)  # [b, gh * gw, width]
        if cfg.use_cls_token:
            cls = op.broadcast_to(op.reshape(self.class_embedding, (1, 1, cfg.width)),
                                  (batch, 1, cfg.width))
            tokens = op.concat([cls, tokens], dim=1)
        if cfg.use_abs_posemb:
            tokens = tokens + self.sample_abs_posemb(grid_h, grid_w)
        if self.ln_pre is not None:
            tokens = self.ln_pre(tokens)
        return tokens, grid_w

    def pool(self, x: nn.Tensor) -> nn.Tensor:
        pool_type = self.config.pool_type
        if pool_type == "tok":
            return op.squeeze(op.split(x, [1], axis=1)[0], 1)
        if pool_type == "avg":
            return op.wrap_nested(relax.op.mean(x._expr, axis=1), "avg_pool")
        if pool_type == "attn":
            return op.squeeze(self.attn_pool(x), 1)
        return x

    def forward_features(
        self,
        x: nn.Tensor,
        norm: bool = False,
        layer_idx: int = -1,
        strip_cls_token: bool = False,
    ) -> nn.Tensor:
        tokens, grid_w = self.embed(x)
        tokens = self.transformer(tokens, grid_w, layer_idx=layer_idx)
        if norm and self.ln_post is not None:
            tokens = self.ln_post(tokens)
        if strip_cls_token and self.config.use_cls_token:
            tokens = op.split(tokens, [1], axis=1)[1]
        return tokens

    def forward(self, x: nn.Tensor, layer_idx: int = -1) -> nn.Tensor:
        pooled = self.pool(self.forward_features(x, norm=True, layer_idx=layer_idx))
        if self.config.output_dim is not None:
            pooled = ops.project(pooled, self.proj)
        return pooled


def text_blocks_config(config: PETextConfig) -> PEConfig:
    """The text tower's blocks as the vision blocks read them: no RoPE, no cls token, no
    LayerScale, the MLP `int(width * mlp_ratio)` wide (the image fields go unused)."""
    return PEConfig(
        patch_size=1, image_size=1, width=config.width, layers=config.layers,
        heads=config.heads, mlp_ratio=config.mlp_ratio, output_dim=None, use_abs_posemb=False,
        use_rope2d=False, pool_type="none", use_ln_pre=False, use_ln_post=False,
    )


class TextTransformer(nn.Module):
    """The PE-Core text tower: embed the ids, run the causal blocks, `ln_final`, take the row
    of the end-of-text token and project it."""

    def __init__(self, config: PETextConfig, dtype: str = "float32") -> None:
        width = config.width
        self.config = config
        self.dtype = dtype
        self.token_embedding = nn.Embedding(config.vocab_size, width, dtype=dtype)
        self.positional_embedding = nn.Parameter((config.context_length, width), dtype)
        self.transformer = Transformer(text_blocks_config(config), dtype, causal=True)
        self.ln_final = LayerNorm(width, eps=LN_EPS, dtype=dtype)
        self.text_projection = nn.Parameter((width, config.output_dim), dtype)

    def embed(self, text: nn.Tensor) -> nn.Tensor:
        """Token ids `[b, seq]` to `[b, seq, width]`: token plus position embedding.

        `seq` is symbolic and must not exceed `context_length`, and every id must be below
        `vocab_size`: the caller checks both (the slice and the lookup read without bounds).
        """
        seq = text.shape[1]
        tokens = op.take(self.token_embedding.weight, text, axis=0)
        positions = op.wrap_nested(relax.op.strided_slice(
            self.positional_embedding._expr, axes=[0], begin=[0], end=[seq],
            assume_inbound=True), "positions")
        return tokens + positions

    def pool(self, x: nn.Tensor, text: nn.Tensor) -> nn.Tensor:
        """The row of each sequence at its end-of-text token: the largest id, so `argmax`."""
        batch, _, width = x.shape
        eot = op.wrap_nested(relax.op.argmax(text._expr, axis=1, keepdims=True), "eot")
        rows = op.broadcast_to(op.reshape(eot, (batch, 1, 1)), (batch, 1, width))
        pooled = op.wrap_nested(relax.op.gather_elements(x._expr, rows._expr, axis=1), "pooled")
        return op.reshape(pooled, (batch, width))

    def forward(self, text: nn.Tensor) -> nn.Tensor:
        """Ids `[b, seq]` (int32, zero-padded after the end-of-text id) to `[b, output_dim]`;
        what the original's `encode_text` returns (not normalised)."""
        x = self.transformer(self.embed(text), grid_w=None)
        return ops.project(self.pool(self.ln_final(x), text), self.text_projection)
