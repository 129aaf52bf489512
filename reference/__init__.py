"""Our PyTorch reference of the PE towers and tokenizer: the oracle of the parity suite.

Written in this repository to match the semantics and state-dict keys of Meta's
`core/vision_encoder/pe.py`, `rope.py` and `tokenizer.py`; it is not a copy of them.
"""

from reference.pe import (
    CLIP,
    AttentionPooling,
    LayerScale,
    ResidualAttentionBlock,
    SelfAttention,
    TextTransformer,
    Transformer,
    VisionTransformer,
    causal_mask,
)
from reference.random_weights import randomize_
from reference.rope import Rope2D, apply_rope, rope_angles

__all__ = [
    "CLIP",
    "AttentionPooling",
    "LayerScale",
    "ResidualAttentionBlock",
    "Rope2D",
    "SelfAttention",
    "TextTransformer",
    "Transformer",
    "VisionTransformer",
    "apply_rope",
    "causal_mask",
    "randomize_",
    "rope_angles",
]
