"""Mask schedules gamma(r) of StraIT Table 10 (definitions as in official MaskGIT).

Used for training (a uniform r gives the masked fraction) and for decoding (r = (t+1) / T),
in float32 as the official code computes them.
Concave schedules (cosine, square, cubic, exp) decode few tokens early and many late.
"""
from __future__ import annotations

import math
from abc import abstractmethod
from typing import Callable

import torch

from stratagen.registry import MaskSchedule, hookimpl


def _float32(op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``op`` of float32 ``x`` rounded once to float32, as a correctly rounded float32 libm gives it
    (evaluated in float64; torch's own float32 cos, pow and exp2 may be off by one unit in the last place)."""
    return op(x.double()).float()


class _Schedule(MaskSchedule):
    """Evaluated in float32 as official MaskGIT's JAX code does (its decode loop: ratio = (t+1)/T
    is a float32 array, ``mask_schedule.schedule`` works on it and on the float32 count N): every
    operation is rounded to float32, each transcendental one once."""

    def __call__(self, ratio: torch.Tensor | float, total: int | torch.Tensor) -> torch.Tensor:
        ratio = torch.as_tensor(ratio, dtype=torch.float32).clamp(0.0, 1.0)
        total = torch.as_tensor(total, dtype=torch.float32, device=ratio.device).clamp_min(2)
        return self.gamma(ratio, total).clamp(0.0, 1.0)

    @abstractmethod
    def gamma(self, r: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        """The unclamped curve; ``r`` float32 in [0, 1], ``total`` float32 token counts (at least 2),
        broadcast against ``r``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


_HALF_PI = torch.tensor(math.pi / 2, dtype=torch.float32)


class CosineSchedule(_Schedule):
    name = "cosine"

    def gamma(self, r, total):
        return _float32(torch.cos, _HALF_PI.to(r.device) * r)


class LinearSchedule(_Schedule):
    name = "linear"

    def gamma(self, r, total):
        return 1 - r


class SquareSchedule(_Schedule):
    name = "square"

    def gamma(self, r, total):
        return 1 - r * r


class CubicSchedule(_Schedule):
    name = "cubic"

    def gamma(self, r, total):
        return 1 - _float32(lambda x: x**3, r)


class SqrtSchedule(_Schedule):
    name = "sqrt"

    def gamma(self, r, total):
        return 1 - r.sqrt()


class LogSchedule(_Schedule):
    """-log2(r) / log2(N): convex; infinite at r = 0, clamped to 1."""

    name = "log"

    def gamma(self, r, total):
        return -_float32(torch.log2, r) / _float32(torch.log2, total)


class ExpSchedule(_Schedule):
    """1 - 2^(-log2(N) (1 - r)): concave; exactly 0 at r = 1."""

    name = "exp"

    def gamma(self, r, total):
        return 1 - _float32(torch.exp2, -_float32(torch.log2, total) * (1 - r))


SCHEDULES = (CosineSchedule, LinearSchedule, SquareSchedule, CubicSchedule, SqrtSchedule, LogSchedule, ExpSchedule)


@hookimpl
def stratagen_register_schedules(register):
    for schedule in SCHEDULES:
        register(schedule.name, schedule)
