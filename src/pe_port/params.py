"""Parameter names, shapes and counts of a config, without building or compiling anything."""

from __future__ import annotations

import math

from pe_port.config import PEConfig


def parameter_count(config: PEConfig) -> int:
    """Number of weights in the vision tower (what the official state dict holds)."""
    import torch

    from reference import VisionTransformer

    with torch.device("meta"):
        tower = VisionTransformer(**config.as_kwargs())
    return sum(math.prod(p.shape) for p in tower.parameters())


def forward_flops(config: PEConfig, batch: int, height: int, width: int) -> int:
    """Multiply-add FLOPs (2 per MAC) of the official `forward` at this input size.

    Counts the matmuls and attention products, which are all but a few percent of the work.
    """
    grid = (height // config.patch_size) * (width // config.patch_size)
    tokens = grid + int(config.use_cls_token)
    w, mlp = config.width, config.mlp_width
    patch = 2 * grid * 3 * config.patch_size**2 * w
    per_block = 2 * tokens * w * (3 * w + w + 2 * mlp) + 4 * tokens * tokens * w
    flops = patch + config.layers * per_block
    if config.pool_type == "attn":
        flops += 2 * tokens * w * 2 * w + 4 * tokens * w + 2 * w * (2 * w + 2 * 4 * w)
    if config.output_dim is not None:
        flops += 2 * w * config.output_dim
    return batch * flops
