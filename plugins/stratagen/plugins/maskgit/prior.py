"""Bidirectional masked-token transformer: MaskGIT's prior and StraIT's CMTM priors.

One implementation serves MaskGIT (one level, no conditions), StraIT's top prior (Eq. 3)
and, with ``conditions``, StraIT's bottom prior, the cascade's f8 prior and the 512
upsampler (Eq. 4): every block then cross-attends to the condition tokens and the class.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stratagen.nn import TransformerBlock
from stratagen.registry import LevelSpec, MaskSchedule, Prior, PriorLoss
from stratagen.sampling import schedule_mask


class ConditionEmbedding(nn.Module):
    """Embeds condition levels and the class into one context sequence ``[B, 1 + sum(h_i w_i), dim]``."""

    def __init__(self, conditions: Sequence[LevelSpec], num_classes: int, dim: int):
        super().__init__()
        self.token_embeddings = nn.ModuleList(nn.Embedding(c.codebook_size, dim) for c in conditions)
        self.class_embedding = nn.Embedding(num_classes + 1, dim)
        self.position = nn.Parameter(torch.zeros(1, 1 + sum(c.length for c in conditions), dim))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, conditions: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        parts = [self.class_embedding(labels)[:, None]]
        parts += [emb(c.flatten(1)) for emb, c in zip(self.token_embeddings, conditions)]
        return self.norm(torch.cat(parts, dim=1) + self.position)


class MaskedTokenModeling(Prior):
    """The masked token modeling loss shared by stratagen's priors; needs ``label_smoothing`` and
    ``class_dropout`` attributes and the :class:`Prior` methods."""

    label_smoothing: float
    class_dropout: float

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor, conditions: Sequence[torch.Tensor],
             schedule: MaskSchedule, generator: torch.Generator) -> PriorLoss:
        """Masked token modeling (MaskGIT Eq. 1, StraIT Eq. 3 and 4).

        Per image, r ~ U(0, 1) and ceil(gamma(r) N) random positions are masked; the loss
        is the label-smoothed cross-entropy over masked positions only. Conditions are the
        ground-truth condition tokens (teacher forcing, §3.2).
        """
        target = tokens.flatten(1)
        B, N = target.shape
        device = target.device
        mask = schedule_mask(schedule, B, N, generator, device)
        drop = torch.rand(B, generator=generator, device=device) < self.class_dropout
        labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        context = self.encode_conditions(conditions, labels)
        logits = self(torch.where(mask, self.mask_token_id, target), labels, context)
        loss = F.cross_entropy(logits[mask], target[mask], label_smoothing=self.label_smoothing)
        with torch.no_grad():
            accuracy = (logits[mask].argmax(-1) == target[mask]).float().mean().item()
        return PriorLoss(loss, {"masked_accuracy": accuracy, "mask_ratio": mask.float().mean().item()})


class MaskedTokenTransformer(MaskedTokenModeling):
    """Logits over ``target``'s tokens from its visible tokens, the class and ``conditions``.

    Input sequence: ``[class token, N target tokens]`` with learned positions; pre-norm
    blocks (self-attention + MLP, then cross-attention + MLP when conditioned: StraIT's
    bottom layer, §4.1); an MLM head tied to
    the token embedding, as in official MaskGIT (BERT-style: dense, GELU, LayerNorm,
    logits = h E^T + b).

    Args:
        target: the level generated (vocabulary ``codebook_size``; id ``codebook_size`` is [MASK]).
        conditions: levels attended to by cross-attention (none: a plain MaskGIT transformer).
        num_classes: class ids ``[0, num_classes)``; ``num_classes`` is the null class.
        depth, width, heads, mlp_dim: transformer size.
        dropout: on embeddings, attention and MLP.
        label_smoothing: of the masked-token cross-entropy (Table 12: 0.1).
        class_dropout: probability of replacing the class by the null class in training
            ("uncond cutoff", Table 12: 0.1; default 0), which trains it for classifier-free guidance.
    """

    def __init__(
        self,
        *,
        target: LevelSpec,
        conditions: Sequence[LevelSpec] = (),
        num_classes: int,
        depth: int,
        width: int,
        heads: int,
        mlp_dim: int,
        dropout: float = 0.1,
        label_smoothing: float = 0.1,
        class_dropout: float = 0.0,
    ):
        super().__init__()
        self.target = target
        self.conditions = tuple(conditions)
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.class_dropout = class_dropout
        self.token_embedding = nn.Embedding(target.codebook_size + 1, width)
        self.class_embedding = nn.Embedding(num_classes + 1, width)
        self.position = nn.Parameter(torch.zeros(1, 1 + target.length, width))
        self.embed_norm = nn.LayerNorm(width, eps=1e-6)
        self.embed_drop = nn.Dropout(dropout)
        self.context = ConditionEmbedding(self.conditions, num_classes, width) if self.conditions else None
        context_dim = width if self.conditions else None
        self.blocks = nn.ModuleList(
            TransformerBlock(width, heads, mlp_dim, dropout=dropout, context_dim=context_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width, eps=1e-6))
        self.head_bias = nn.Parameter(torch.zeros(target.codebook_size))
        self.apply(init_bert_weights)
        nn.init.trunc_normal_(self.position, std=0.02)
        if self.context is not None:
            nn.init.trunc_normal_(self.context.position, std=0.02)

    def encode_conditions(self, conditions: Sequence[torch.Tensor], labels: torch.Tensor,
                          cache_kv: bool = True) -> object:
        """Condition levels ``[B, h_i, w_i]`` -> per-block cross-attention keys/values.

        Computed once per image and reused at every decoding step (StraIT §3.3). With
        ``cache_kv=False`` the embedded context ``[B, M, width]`` is returned instead and
        each block projects it at every call (the reference path for tests).
        """
        if self.context is None:
            if conditions:
                raise ValueError(f"this prior takes no conditions, got {len(conditions)}")
            return None
        if len(conditions) != len(self.conditions):
            raise ValueError(f"expected {len(self.conditions)} condition levels, got {len(conditions)}")
        embedded = self.context(conditions, labels)
        if not cache_kv:
            return embedded
        return [block.project_context(embedded) for block in self.blocks]

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, context: object = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """``tokens`` ``[B, N]`` (``mask_token_id`` = masked), ``labels`` ``[B]`` -> ``[B, N, V]``,
        or ``[B, M, V]`` at ``positions`` ``[B, M]`` (the head runs there only)."""
        x = torch.cat([self.class_embedding(labels)[:, None], self.token_embedding(tokens)], dim=1)
        x = self.embed_drop(self.embed_norm(x + self.position))
        for i, block in enumerate(self.blocks):
            if context is None:
                x = block(x)
            elif isinstance(context, torch.Tensor):
                x = block(x, context=context)
            else:
                x = block(x, context_kv=context[i])
        h = self.head(self.norm(at_positions(x[:, 1:], positions)))
        return h @ self.token_embedding.weight[: self.target.codebook_size].T + self.head_bias


def at_positions(x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """Rows ``positions`` ``[B, M]`` of ``x`` ``[B, N, C]`` -> ``[B, M, C]`` (all of ``x`` when None)."""
    if positions is None:
        return x
    return x.gather(1, positions[..., None].expand(-1, -1, x.shape[-1]))


def init_bert_weights(module: nn.Module) -> None:
    """BERT/MaskGIT initialisation: truncated normal(0.02), zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
