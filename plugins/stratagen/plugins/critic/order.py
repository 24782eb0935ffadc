"""The ``critic`` decode order: keep the tokens the critic believes real (Lezama et al. 2022, §3.2)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from stratagen.registry import DecodeOrder, DecodeState, GenerativeModel
from stratagen.sampling import annealed_gumbel


class CriticOrder(DecodeOrder):
    """Scores each sampled token by the critic's log-probability that it is real, plus the same
    annealed Gumbel noise as MaskGIT's confidence (``choice_temperature``), so the tokens the
    critic deems least likely real are masked again."""

    name = "critic"

    def begin(self, model: GenerativeModel, stream: str, labels: torch.Tensor,
              conditions: Sequence[torch.Tensor]) -> object:
        critic = model.critic_for(stream).critic
        return critic, critic.encode_conditions(conditions, labels)

    def scores(self, state: DecodeState, context: object) -> torch.Tensor:
        critic, critic_context = context
        sampled_logit = critic(state.sampled, state.labels, critic_context).float()
        return F.logsigmoid(-sampled_logit) + annealed_gumbel(state)
