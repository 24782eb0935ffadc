"""STAR's normalized 2D rotary position embedding (STAR slides, "Normalized RoPE").

A token at row i, column j of an ``h x w`` grid sits at ((i + 0.5) / h, (j + 0.5) / w) in the
unit square, times a reference side (the finest grid's), so tokens of every scale that cover
the same place of the image share one position, and no positional parameters are learned.
The first half of each head's channels is rotated by the row position, the second half by
the column position (RoFormer's rotation, per axis, on channel pairs).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn


def grid_positions(sides: Sequence[int], reference: float) -> Tensor:
    """``[sum(s^2), 2]`` (row, column) positions of the cells of square grids of ``sides``, concatenated
    row-major, each in the unit square scaled by ``reference``."""
    parts = []
    for side in sides:
        centres = (torch.arange(side, dtype=torch.float64) + 0.5) / side * reference
        rows, cols = torch.meshgrid(centres, centres, indexing="ij")
        parts.append(torch.stack([rows.flatten(), cols.flatten()], dim=1))
    return torch.cat(parts)


class NormalizedRope2D(nn.Module):
    """Rotations of queries/keys ``[B, heads, N, head_dim]`` at given 2D positions.

    Args:
        head_dim: channels per head, a multiple of 4 (two axes, channel pairs).
        positions: ``[L, 2]`` positions of the whole sequence (:func:`grid_positions`).
        base: frequency base (RoFormer: 10000).
    """

    def __init__(self, head_dim: int, positions: Tensor, base: float = 10000.0):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2D RoPE needs a head dimension divisible by 4, got {head_dim}")
        quarter = head_dim // 4
        inv_freq = base ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
        angles = torch.cat([positions[:, :1] * inv_freq, positions[:, 1:] * inv_freq], dim=1)  # [L, head_dim/2]
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def rotate(self, x: Tensor, start: int) -> Tensor:
        """``x`` ``[B, heads, N, head_dim]`` at sequence positions ``start .. start + N``, rotated."""
        n = x.shape[2]
        cos, sin = self.cos[start:start + n].to(x.dtype), self.sin[start:start + n].to(x.dtype)
        a, b = x.unflatten(-1, (-1, 2)).unbind(-1)  # channel pairs
        return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)

    def at(self, start: int) -> Callable[[Tensor], Tensor]:
        """The rotation of positions from ``start`` on, as :class:`~stratagen.nn.Attention` takes it."""
        return lambda x: self.rotate(x, start)
