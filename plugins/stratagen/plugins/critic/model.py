"""The token critic network and its training objective (Lezama et al. 2022, §3)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stratagen.nn import TransformerBlock
from stratagen.plugins.maskgit.prior import ConditionEmbedding
from stratagen.registry import Critic, LevelSpec, MaskSchedule, Prior, PriorLoss
from stratagen.sampling import sample_tokens, schedule_mask


class TokenCritic(Critic):
    """Logits ``[B, N]`` that each token of a complete grid was sampled rather than real.

    Input sequence: ``[class token, N tokens]`` with learned positions; pre-norm blocks
    (cross-attending to the prior's condition levels and the class when it has any); a
    linear head to one logit per position.

    Args:
        target, conditions, num_classes: those of ``prior``.
        prior: the prior whose samples the critic learns to recognise. It is not a
            submodule: its weights belong to the prior and it is only evaluated here.
        depth, width, heads, mlp_dim, dropout: transformer size.
    """

    def __init__(self, *, target: LevelSpec, conditions: Sequence[LevelSpec] = (), num_classes: int, prior: Prior,
                 depth: int, width: int, heads: int, mlp_dim: int, dropout: float = 0.1):
        super().__init__()
        self.target = target
        self.conditions = tuple(conditions)
        self.num_classes = num_classes
        object.__setattr__(self, "prior", prior)  # not registered: not trained, not saved with the critic
        self.token_embedding = nn.Embedding(target.codebook_size, width)
        self.class_embedding = nn.Embedding(num_classes + 1, width)
        self.position = nn.Parameter(torch.zeros(1, 1 + target.length, width))
        self.embed_norm = nn.LayerNorm(width, eps=1e-6)
        self.embed_drop = nn.Dropout(dropout)
        self.context = ConditionEmbedding(self.conditions, num_classes, width) if self.conditions else None
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, mlp_dim, dropout=dropout,
                                                     context_dim=width if self.conditions else None)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, 1)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.position, std=0.02)

    def encode_conditions(self, conditions: Sequence[torch.Tensor], labels: torch.Tensor) -> object:
        """Condition levels ``[B, h_i, w_i]`` -> per-block cross-attention keys/values (None without)."""
        if self.context is None:
            return None
        embedded = self.context(conditions, labels)
        return [block.project_context(embedded) for block in self.blocks]

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, context: object = None) -> torch.Tensor:
        """``tokens`` ``[B, N]`` in ``[0, codebook_size)``, ``labels`` ``[B]`` -> ``[B, N]`` logits of "sampled"."""
        x = torch.cat([self.class_embedding(labels)[:, None], self.token_embedding(tokens)], dim=1)
        x = self.embed_drop(self.embed_norm(x + self.position))
        for i, block in enumerate(self.blocks):
            x = block(x) if context is None else block(x, context_kv=context[i])
        return self.head(self.norm(x[:, 1:])).squeeze(-1)

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor, conditions: Sequence[torch.Tensor],
             schedule: MaskSchedule, generator: torch.Generator) -> PriorLoss:
        """Token-Critic's objective (§3.1): mask ``ceil(gamma(r) N)`` random positions of the real
        grid ``tokens`` ``[B, h, w]`` (r ~ U(0, 1)), refill them with one draw from the prior, and
        train the critic to find them: binary cross-entropy against the mask, every position."""
        real = tokens.flatten(1)
        B, N = real.shape
        device = real.device
        mask = schedule_mask(schedule, B, N, generator, device)
        with torch.no_grad():
            was_training = self.prior.training
            self.prior.eval()
            prior_context = self.prior.encode_conditions(conditions, labels)
            logits = self.prior(torch.where(mask, self.prior.mask_token_id, real), labels, prior_context).float()
            self.prior.train(was_training)
            drawn = sample_tokens(logits, 1.0, generator)[0]
        filled = torch.where(mask, drawn, real)
        scores = self(filled, labels, self.encode_conditions(conditions, labels))
        loss = F.binary_cross_entropy_with_logits(scores, mask.float())
        with torch.no_grad():
            accuracy = ((scores > 0) == mask).float().mean().item()
            changed = (mask & (filled != real)).float().sum().item() / max(1.0, mask.float().sum().item())
        return PriorLoss(loss, {"critic_accuracy": accuracy, "mask_ratio": mask.float().mean().item(),
                                "sampled_differs": changed})
