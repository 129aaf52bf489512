"""Our PyTorch reference of the PE vision tower: the oracle of the parity suite.

Written in this repository to match the semantics and state-dict keys of Meta's
`core/vision_encoder/pe.py` and `rope.py`; it is not a copy of them.
"""

from reference.pe import (
    AttentionPooling,
    LayerScale,
    ResidualAttentionBlock,
    SelfAttention,
    Transformer,
    VisionTransformer,
)
from reference.random_weights import randomize_
from reference.rope import Rope2D, apply_rope, rope_angles

__all__ = [
    "AttentionPooling",
    "LayerScale",
    "ResidualAttentionBlock",
    "Rope2D",
    "SelfAttention",
    "Transformer",
    "VisionTransformer",
    "apply_rope",
    "randomize_",
    "rope_angles",
]
