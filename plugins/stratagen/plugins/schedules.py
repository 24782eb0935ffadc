"""Mask schedules gamma(r) of StraIT Table 10 (definitions as in official MaskGIT).

Used for training (a uniform r gives the masked fraction) and for decoding (r = t / T).
Concave schedules (cosine, square, cubic, exp) decode few tokens early and many late.
"""
from __future__ import annotations

import math
from abc import abstractmethod

import torch

from stratagen.registry import MaskSchedule, hookimpl


class _Schedule(MaskSchedule):
    def __call__(self, ratio: torch.Tensor | float, total: int | torch.Tensor) -> torch.Tensor:
        ratio = torch.as_tensor(ratio, dtype=torch.float64).clamp(0.0, 1.0)
        total = torch.as_tensor(total, dtype=torch.float64, device=ratio.device).clamp_min(2)
        return self.gamma(ratio, total).clamp(0.0, 1.0)

    @abstractmethod
    def gamma(self, r: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        """The unclamped curve; ``r`` float64 in [0, 1], ``total`` float64 token counts (at least 2),
        broadcast against ``r``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CosineSchedule(_Schedule):
    name = "cosine"

    def gamma(self, r, total):
        return torch.cos(r * math.pi / 2)


class LinearSchedule(_Schedule):
    name = "linear"

    def gamma(self, r, total):
        return 1 - r


class SquareSchedule(_Schedule):
    name = "square"

    def gamma(self, r, total):
        return 1 - r**2


class CubicSchedule(_Schedule):
    name = "cubic"

    def gamma(self, r, total):
        return 1 - r**3


class SqrtSchedule(_Schedule):
    name = "sqrt"

    def gamma(self, r, total):
        return 1 - r.sqrt()


class LogSchedule(_Schedule):
    """-log2(r) / log2(N): convex; infinite at r = 0, clamped to 1."""

    name = "log"

    def gamma(self, r, total):
        return -torch.log2(r) / torch.log2(total)


class ExpSchedule(_Schedule):
    """1 - 2^(-log2(N) (1 - r)): concave; exactly 0 at r = 1."""

    name = "exp"

    def gamma(self, r, total):
        return 1 - torch.exp2(-torch.log2(total) * (1 - r))


SCHEDULES = (CosineSchedule, LinearSchedule, SquareSchedule, CubicSchedule, SqrtSchedule, LogSchedule, ExpSchedule)


@hookimpl
def stratagen_register_schedules(register):
    for schedule in SCHEDULES:
        register(schedule.name, schedule)
