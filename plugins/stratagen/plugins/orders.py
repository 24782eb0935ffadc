"""Decode orders: which of a step's sampled tokens are kept (scored high) and which masked again.

- ``confidence``: official MaskGIT (§3.2): the sampled token's log-probability plus
  Gumbel noise annealed by ``choice_temperature * (1 - t/T)``.
- ``random``: uniformly random positions each step (MaskGIT's ablation baseline).
- ``halton``: Halton-MaskGIT (Besnier et al. 2025): positions revealed along a 2D Halton
  low-discrepancy sequence over the grid, so each step's tokens are spread evenly and far
  from each other; deterministic, the count per step still comes from the schedule.
"""
from __future__ import annotations

import functools

import torch

from stratagen.registry import DecodeOrder, DecodeState, hookimpl
from stratagen.sampling import annealed_gumbel


class ConfidenceOrder(DecodeOrder):
    name = "confidence"

    def scores(self, state: DecodeState, context: object) -> torch.Tensor:
        return state.log_probs + annealed_gumbel(state)


class RandomOrder(DecodeOrder):
    name = "random"

    def scores(self, state: DecodeState, context: object) -> torch.Tensor:
        return torch.rand(state.sampled.shape, generator=state.generator, device=state.sampled.device)


def radical_inverse(index: int, base: int) -> float:
    """The van der Corput radical inverse of ``index`` in ``base``: digits mirrored about the point."""
    result, fraction = 0.0, 1.0 / base
    while index:
        index, digit = divmod(index, base)
        result += digit * fraction
        fraction /= base
    return result


@functools.cache
def halton_order(height: int, width: int) -> torch.Tensor:
    """``[height * width]`` LongTensor: the row-major positions of the grid in the order a 2D
    Halton sequence (bases 2 and 3) first visits their cells; every cell appears once."""
    seen: dict[int, None] = {}
    index = 1
    while len(seen) < height * width:
        row = int(radical_inverse(index, 2) * height)
        col = int(radical_inverse(index, 3) * width)
        seen.setdefault(row * width + col, None)
        index += 1
    return torch.tensor(list(seen), dtype=torch.long)


class HaltonOrder(DecodeOrder):
    name = "halton"

    def scores(self, state: DecodeState, context: object) -> torch.Tensor:
        order = halton_order(state.height, state.width).to(state.sampled.device)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=order.device)
        return (-rank.float()).expand(state.sampled.shape[0], -1)  # earlier in the sequence: revealed first


@hookimpl
def stratagen_register_orders(register):
    for order in (ConfidenceOrder, RandomOrder, HaltonOrder):
        register(order.name, order)
