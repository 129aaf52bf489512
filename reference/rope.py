"""2D rotary position embedding as PE applies it (reference semantics, written here).

Each head's features split into an x half and a y half. Each half is a 1D rotary embedding of
dimension `D = head_dim // 2` with `inv_freq[i] = 10000 ** (-2i / D)` for `i < D // 2`, every
angle repeated twice in place (`[a0, a0, a1, a1, ...]`). Adjacent feature pairs rotate:
`(t0, t1) -> (t0 cos - t1 sin, t1 cos + t0 sin)`. With a cls token, grid positions start at 1 and
the cls token keeps angle 0. Features past `4 * (D // 2)` (head_dim not a multiple of 4) pass
through unrotated, as in the original.
"""

from __future__ import annotations

import torch

THETA = 10000.0


def axis_inv_freq(head_dim: int) -> torch.Tensor:
    """Inverse frequencies of one axis, computed in float32 as the original does."""
    axis_dim = head_dim // 2
    exponents = torch.arange(0, axis_dim, 2)[: axis_dim // 2].float() / axis_dim
    return 1.0 / (THETA**exponents)


def rope_angles(head_dim: int, grid_h: int, grid_w: int, use_cls_token: bool) -> torch.Tensor:
    """Angles `[tokens, rot_dim]` (float32): x angles then y angles, each interleaved twice."""
    inv_freq = axis_inv_freq(head_dim)
    offset = 1 if use_cls_token else 0
    ys = torch.arange(grid_h).float() + offset
    xs = torch.arange(grid_w).float() + offset
    y_angles = torch.repeat_interleave(ys[:, None] * inv_freq[None, :], 2, dim=-1)
    x_angles = torch.repeat_interleave(xs[:, None] * inv_freq[None, :], 2, dim=-1)
    grid = torch.cat(
        [
            x_angles[None, :, :].expand(grid_h, grid_w, -1),
            y_angles[:, None, :].expand(grid_h, grid_w, -1),
        ],
        dim=-1,
    ).reshape(grid_h * grid_w, -1)
    if use_cls_token:
        grid = torch.cat([torch.zeros(1, grid.shape[-1]), grid], dim=0)
    return grid


def rotate_pairs(t: torch.Tensor) -> torch.Tensor:
    """`(t0, t1, t2, t3, ...) -> (-t1, t0, -t3, t2, ...)`."""
    pairs = t.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rope(t: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate `t` `[batch, heads, tokens, head_dim]` by `angles` `[tokens, rot_dim]`."""
    rot_dim = angles.shape[-1]
    head, tail = t[..., :rot_dim], t[..., rot_dim:]
    angles = angles.to(t.device)
    rotated = head * angles.cos() + rotate_pairs(head) * angles.sin()
    return torch.cat([rotated, tail], dim=-1).to(t.dtype)


class Rope2D:
    """Holds the angles of the current grid and rotates q and k (not a module: no weights)."""

    def __init__(self, head_dim: int, use_cls_token: bool) -> None:
        self.head_dim = head_dim
        self.use_cls_token = use_cls_token
        self.grid: tuple[int, int] | None = None
        self.angles: torch.Tensor | None = None

    def update_grid(self, grid_h: int, grid_w: int) -> None:
        if self.grid != (grid_h, grid_w):
            self.grid = (grid_h, grid_w)
            self.angles = rope_angles(self.head_dim, grid_h, grid_w, self.use_cls_token)

    def __call__(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return apply_rope(q, self.angles), apply_rope(k, self.angles)
