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
