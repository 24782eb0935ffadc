"""Random training masks drawn by a mask schedule (MaskGIT §3.1, Eq. 1; StraIT Eq. 3 and 4)."""
from __future__ import annotations

import torch

from stratagen.registry import MaskSchedule


def schedule_mask(schedule: MaskSchedule, batch: int, length: int, generator: torch.Generator,
                  device: torch.device | str) -> torch.Tensor:
    """``[batch, length]`` bool: per row, r ~ U(0, 1) and ``ceil(gamma(r) * length)`` positions
    (at least one) chosen uniformly at random are True (masked)."""
    ratio = schedule(torch.rand(batch, generator=generator, device=device), length).float()
    num_masked = torch.ceil(ratio * length).clamp(1, length).long()
    ranks = torch.rand(batch, length, generator=generator, device=device).argsort(dim=1).argsort(dim=1)
    return ranks < num_masked[:, None]
