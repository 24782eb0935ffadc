"""Official MaskGIT's BERT-style transformer (``maskgit/nets/maskgit_transformer.py``) as a prior.

It differs from stratagen's ``maskgit`` prior in ways its released weights depend on: one word
embedding table for image tokens, classes and [MASK] (vocabulary = codebook + classes + 1; the
class token, ``label + codebook_size``, sits at position 0 and [MASK] is the last row); post-norm
layers (BERT) with LayerNorm eps 1e-12 and tanh-approximated GELU (flax's default); an MLM head
(dense, GELU, LayerNorm, tied embedding, bias over the whole vocabulary). No final LayerNorm.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from stratagen.nn import PostNormBlock
from stratagen.plugins.maskgit.prior import MaskedTokenModeling, at_positions, init_bert_weights
from stratagen.registry import LevelSpec

LAYER_NORM_EPS = 1e-12


class BertMaskedTokenTransformer(MaskedTokenModeling):
    """Logits over ``target``'s tokens from its visible tokens and the class (no condition levels).

    The null class (``num_classes``, for classifier-free guidance) maps to the last vocabulary
    row, the [MASK] embedding: official MaskGIT has no null class of its own.

    Args:
        target: the level generated (``codebook_size`` image tokens).
        conditions: must be empty.
        num_classes, depth, width, heads, mlp_dim, dropout, label_smoothing, class_dropout: as
            :class:`stratagen.plugins.maskgit.MaskedTokenTransformer` (official: 24 x 768, 16 heads,
            3072; no class dropout).
    """

    def __init__(self, *, target: LevelSpec, conditions: Sequence[LevelSpec] = (), num_classes: int, depth: int,
                 width: int, heads: int, mlp_dim: int, dropout: float = 0.1, label_smoothing: float = 0.1,
                 class_dropout: float = 0.0):
        super().__init__()
        if conditions:
            raise ValueError("the BERT-style MaskGIT transformer takes no condition levels")
        self.target = target
        self.conditions = ()
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.class_dropout = class_dropout
        self.vocab_size = target.codebook_size + num_classes + 1
        self.word_embedding = nn.Embedding(self.vocab_size, width)
        self.position = nn.Parameter(torch.zeros(1, 1 + target.length, width))
        self.embed_norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.embed_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(PostNormBlock(width, heads, mlp_dim, dropout, eps=LAYER_NORM_EPS)
                                    for _ in range(depth))
        self.head = nn.Sequential(nn.Linear(width, width), nn.GELU(approximate="tanh"),
                                  nn.LayerNorm(width, eps=LAYER_NORM_EPS))
        self.head_bias = nn.Parameter(torch.zeros(self.vocab_size))
        self.apply(init_bert_weights)
        nn.init.trunc_normal_(self.position, std=0.02)

    def encode_conditions(self, conditions: Sequence[torch.Tensor], labels: torch.Tensor) -> None:
        if conditions:
            raise ValueError(f"this prior takes no conditions, got {len(conditions)}")
        return None

    def input_ids(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Official input ids ``[B, 1 + N]``: class token ``label + codebook_size``, then the image
        tokens with [MASK] (stratagen's ``mask_token_id``) as the last vocabulary row."""
        codebook = self.target.codebook_size
        tokens = torch.where(tokens == self.mask_token_id, self.vocab_size - 1, tokens)
        return torch.cat([(labels + codebook)[:, None], tokens], dim=1)

    def vocabulary_logits(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Official ``input_ids`` ``[B, 1 + N]`` -> logits over the whole vocabulary ``[B, 1 + N, V]``,
        or ``[B, M, V]`` at sequence ``positions`` ``[B, M]`` (the head runs there only)."""
        x = self.embed_drop(self.embed_norm(self.word_embedding(input_ids) + self.position))
        for block in self.blocks:
            x = block(x)
        return self.head(at_positions(x, positions)) @ self.word_embedding.weight.T + self.head_bias

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, context: object = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """``tokens`` ``[B, N]``, ``labels`` ``[B]`` -> ``[B, N, codebook_size]`` (what official
        inference keeps: ``logits[..., :codebook_size]`` of the image positions), or ``[B, M, ...]``
        at image ``positions`` ``[B, M]``."""
        if positions is None:
            positions = torch.arange(1, tokens.shape[1] + 1, device=tokens.device).expand(tokens.shape[0], -1)
        else:
            positions = positions + 1  # after the class token
        logits = self.vocabulary_logits(self.input_ids(tokens, labels), positions)
        return logits[..., : self.target.codebook_size]
