"""Parameter names, shapes and counts of a config, without building or compiling anything."""

from __future__ import annotations

from pe_port.config import PEConfig, PETextConfig


def parameter_count(config: PEConfig) -> int:
    """Number of weights in the vision tower (what the official state dict holds), counted from
    the config alone: `pe-port list` needs neither PyTorch nor TVM. The tests check it
    against the tower's parameters for every official config."""
    w, mlp = config.width, config.mlp_width
    linear = lambda n_in, n_out: n_in * n_out + n_out  # noqa: E731  weight and bias
    block = linear(w, 3 * w) + linear(w, w) + 2 * 2 * w + linear(w, mlp) + linear(mlp, w)
    block += 2 * w if config.use_layer_scale else 0
    count = 3 * config.patch_size**2 * w + config.layers * block
    count += w if config.use_cls_token else 0
    count += config.num_pos * w if config.use_abs_posemb else 0
    count += 2 * w * (int(config.use_ln_pre) + int(config.use_ln_post))
    if config.pool_type == "attn":
        count += w + linear(w, 3 * w) + linear(w, w) + 2 * w + linear(w, 4 * w) + linear(4 * w, w)
    count += w * config.output_dim if config.output_dim is not None else 0
    return count


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


def text_forward_flops(config: PETextConfig, batch: int, seq: int) -> int:
    """Multiply-add FLOPs of the text tower's `forward` on `batch` texts of `seq` tokens: the
    matmuls and the full (unmasked) attention products, and the projection of the pooled row."""
    w = config.width
    mlp = int(w * config.mlp_ratio)
    per_block = 2 * seq * w * (3 * w + w + 2 * mlp) + 4 * seq * seq * w
    return batch * (config.layers * per_block + 2 * w * config.output_dim)
