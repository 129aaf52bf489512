"""Seeded random weights for a reference tower, for tests and the demo until real weights load."""

from __future__ import annotations

import torch

_NORM_WEIGHTS = ("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight",
                 "layernorm.weight", "ln_final.weight")


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every parameter with random values: no zero bias, no constant gamma or norm weight.

    Matrices get fan-in scaling so activations stay O(1) through deep stacks; vectors (biases,
    LayerNorm affine, LayerScale gamma), the embedding tables and CLIP's scalar `logit_scale` get
    values far from any init constant, so a dropped or misplaced one changes the output visibly.
    Values are float32-representable, so an fp32 copy of the weights equals a float64 one.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float64)
            if name.endswith(_NORM_WEIGHTS):
                value = 1.0 + 0.3 * noise
            elif name.endswith("gamma"):
                value = 0.5 + 0.5 * noise
            elif param.ndim >= 2 and "embedding" not in name and name != "attn_pool.probe":
                value = noise * param[0].numel() ** -0.5
            else:
                value = 0.5 * noise
            param.copy_(value.float().to(param.dtype))
    return module
