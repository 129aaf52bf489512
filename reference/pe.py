"""The PE towers in PyTorch, module for module and key for key with the original.

An official state dict loads into `VisionTransformer` (vision-only checkpoints) or `CLIP`
(PE-Core: text keys at the root, vision keys under `visual.`) with `strict=True`. Parameters are
created uninitialised (`torch.empty`): tests and loaders always fill every one of them.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from reference.rope import Rope2D

LN_EPS = 1e-5


def _mlp(width: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            [
                ("c_fc", nn.Linear(width, hidden)),
                ("gelu", nn.GELU()),
                ("c_proj", nn.Linear(hidden, width)),
            ]
        )
    )


class LayerScale(nn.Module):
    """`x * gamma`, a learned per-channel scale on a residual branch."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class AttentionPooling(nn.Module):
    """A learned probe attends over the tokens; an MLP refines the pooled vector."""

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.empty(1, 1, embed_dim))
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.layernorm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.mlp = _mlp(embed_dim, int(embed_dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        query = self.probe.expand(batch, -1, -1).to(x.dtype)
        pooled = self.attn(query, x, x, need_weights=False)[0]
        return pooled + self.mlp(self.layernorm(pooled))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused q|k|v projection, optional 2D RoPE and mask.

    Without RoPE it computes what the original's `nn.MultiheadAttention` (the text tower's
    attention) computes, with the same parameter names.
    """

    def __init__(self, embed_dim: int, num_heads: int, rope: Rope2D | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.rope = rope

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`attn_mask`: `[seq, seq]`, added to the attention logits (`-inf` hides a key)."""
        batch, seq, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        # Features are laid out q | k | v, each (heads, head_dim).
        qkv = qkv.view(batch, seq, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.rope is not None:
            q, k = self.rope(q, k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             scale=self.head_dim**-0.5)
        out = out.transpose(1, 2).reshape(batch, seq, width)
        return self.out_proj(out)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: `x += ls_1(attn(ln_1(x)))`, then `x += ls_2(mlp(ln_2(x)))`."""

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_width: int,
        use_layer_scale: bool,
        rope: Rope2D | None,
    ) -> None:
        super().__init__()
        self.attn = SelfAttention(width, heads, rope=rope)
        self.ls_1 = LayerScale(width) if use_layer_scale else nn.Identity()
        self.ls_2 = LayerScale(width) if use_layer_scale else nn.Identity()
        self.ln_1 = nn.LayerNorm(width, eps=LN_EPS)
        self.ln_2 = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = _mlp(width, mlp_width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.ls_1(self.attn(self.ln_1(x), attn_mask=attn_mask))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    """A stack of residual blocks that can stop after any of them."""

    def __init__(self, layers: int, make_block) -> None:
        super().__init__()
        self.layers = layers
        self.resblocks = nn.ModuleList([make_block() for _ in range(layers)])

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, layer_idx: int = -1
    ) -> torch.Tensor:
        stop_idx = (self.layers + layer_idx) % self.layers
        for block in self.resblocks[: stop_idx + 1]:
            x = block(x, attn_mask=attn_mask)
        return x


class VisionTransformer(nn.Module):
    """The PE vision tower. Takes the official config names as keyword arguments."""

    def __init__(
        self,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float,
        output_dim: int | None,
        ls_init_value: float | None = None,
        drop_path: float = 0.0,
        image_size: int = 224,
        use_abs_posemb: bool = True,
        use_cls_token: bool = False,
        use_rope2d: bool = True,
        pool_type: str = "attn",
        attn_pooler_heads: int = 8,
        use_ln_pre: bool = True,
        use_ln_post: bool = True,
    ) -> None:
        super().__init__()
        del drop_path  # training only
        self.patch_size = patch_size
        self.width = width
        self.pool_type = pool_type
        self.use_cls_token = use_cls_token
        self.use_abs_posemb = use_abs_posemb
        self.posemb_grid_size = image_size // patch_size

        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.rope = Rope2D(width // heads, use_cls_token) if use_rope2d else None
        self.ln_pre = nn.LayerNorm(width, eps=LN_EPS) if use_ln_pre else nn.Identity()
        self.ln_post = nn.LayerNorm(width, eps=LN_EPS) if use_ln_post else nn.Identity()
        self.transformer = Transformer(
            layers,
            lambda: ResidualAttentionBlock(
                width, heads, int(width * mlp_ratio), ls_init_value is not None, self.rope
            ),
        )
        if pool_type == "attn":
            self.attn_pool = AttentionPooling(width, attn_pooler_heads)
        if use_cls_token:
            self.class_embedding = nn.Parameter(torch.empty(width))
        if use_abs_posemb:
            num_pos = int(use_cls_token) + self.posemb_grid_size**2
            self.positional_embedding = nn.Parameter(torch.empty(num_pos, width))
        if output_dim is not None:
            self.proj = nn.Parameter(torch.empty(width, output_dim))
        else:
            self.proj = None

    def sample_abs_posemb(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """The position embedding for a `grid_h x grid_w` grid, bilinearly resized if needed."""
        pos = self.positional_embedding
        if (grid_h, grid_w) == (self.posemb_grid_size,) * 2:
            return pos[None]
        cls_pos, grid_pos = (pos[:1], pos[1:]) if self.use_cls_token else (pos[:0], pos)
        side = self.posemb_grid_size
        grid_pos = grid_pos.reshape(1, side, side, self.width).permute(0, 3, 1, 2)
        grid_pos = F.interpolate(grid_pos, size=(grid_h, grid_w), mode="bilinear",
                                 align_corners=False)
        grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(grid_h * grid_w, self.width)
        return torch.cat([cls_pos, grid_pos], dim=0)[None]

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "tok":
            return x[:, 0]
        if self.pool_type == "avg":
            return x.mean(dim=1)
        if self.pool_type == "attn":
            return self.attn_pool(x).squeeze(1)
        return x

    def forward_features(
        self,
        x: torch.Tensor,
        norm: bool = False,
        layer_idx: int = -1,
        strip_cls_token: bool = False,
    ) -> torch.Tensor:
        batch, _, height, width = x.shape
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        x = self.conv1(x).permute(0, 2, 3, 1).reshape(batch, grid_h * grid_w, self.width)
        if self.use_cls_token:
            cls = self.class_embedding.view(1, 1, -1).expand(batch, -1, -1)
            x = torch.cat([cls, x], dim=1)
        if self.use_abs_posemb:
            x = x + self.sample_abs_posemb(grid_h, grid_w)
        if self.rope is not None:
            self.rope.update_grid(grid_h, grid_w)
        x = self.ln_pre(x)
        x = self.transformer(x, layer_idx=layer_idx)
        if norm:
            x = self.ln_post(x)
        if strip_cls_token and self.use_cls_token:
            x = x[:, 1:, :]
        return x

    def forward(
        self, x: torch.Tensor, layer_idx: int = -1, strip_cls_token: bool = False
    ) -> torch.Tensor:
        x = self.forward_features(x, norm=True, layer_idx=layer_idx,
                                  strip_cls_token=strip_cls_token)
        x = self.pool(x)
        if self.proj is not None:
            x = x @ self.proj
        return x


def causal_mask(size: int) -> torch.Tensor:
    """`[size, size]`, added to attention logits: 0 on and below the diagonal, -inf above."""
    return torch.full((size, size), float("-inf")).triu(1)


class TextTransformer(nn.Module):
    """The PE-Core text tower: a causal transformer over token ids, pooled at end of text.

    Takes the official `PETextConfig` names as keyword arguments. No LayerScale, no RoPE; the
    attention is the original's `nn.MultiheadAttention`, which `SelfAttention` computes.
    """

    def __init__(
        self,
        context_length: int,
        width: int,
        heads: int,
        layers: int,
        output_dim: int,
        mlp_ratio: float = 4.0,
        vocab_size: int = 49408,
    ) -> None:
        super().__init__()
        self.context_length = context_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Transformer(
            layers,
            lambda: ResidualAttentionBlock(
                width, heads, int(width * mlp_ratio), use_layer_scale=False, rope=None
            ),
        )
        self.ln_final = nn.LayerNorm(width, eps=LN_EPS)
        # Not in the state dict: the original rebuilds it too.
        self.register_buffer("attn_mask", causal_mask(context_length), persistent=False)
        self.text_projection = nn.Parameter(torch.empty(width, output_dim))

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        """`text`: int64 ids `[batch, seq]`, `seq <= context_length` -> `[batch, output_dim]`."""
        batch, seq = text.shape
        x = self.token_embedding(text) + self.positional_embedding[:seq]
        x = self.transformer(x, attn_mask=self.attn_mask[:seq, :seq].to(x.dtype))
        x = self.ln_final(x)
        # The end-of-text id is the largest id, and the causal mask keeps later padding out.
        pooled = x[torch.arange(batch), text.argmax(dim=-1)]
        return pooled @ self.text_projection


class CLIP(TextTransformer):
    """PE-Core: the text tower at the root of the state dict, the vision tower as `visual`.

    `vision_cfg` and `text_cfg` hold the official config names (`PEConfig.as_kwargs()`,
    `PETextConfig.as_kwargs()`).
    """

    def __init__(self, vision_cfg: dict, text_cfg: dict) -> None:
        super().__init__(**text_cfg)
        self.visual = VisionTransformer(**vision_cfg)
        self.logit_scale = nn.Parameter(torch.empty(()))

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.visual(image)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_video(self, video: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """`[batch, frames, 3, H, W]` -> the mean of the frame embeddings (not renormalised)."""
        batch, frames, channels, height, width = video.shape
        x = self.encode_image(video.reshape(batch * frames, channels, height, width), normalize)
        return x.reshape(batch, frames, -1).mean(dim=1)

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = super().forward(text)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(
        self, image: torch.Tensor | None = None, text: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """Normalised image and text embeddings (None for a missing input), `logit_scale.exp()`."""
        image_emb = self.encode_image(image, normalize=True) if image is not None else None
        text_emb = self.encode_text(text, normalize=True) if text is not None else None
        return image_emb, text_emb, self.logit_scale.exp()
