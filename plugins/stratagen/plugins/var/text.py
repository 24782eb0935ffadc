"""STAR's text conditioning at demo scale: a word vocabulary of the captions and a small text
encoder trained with the prior (STAR slides, "Textual guidance": a pooled text feature for the
start token and cross-attention to the text tokens in every block).

No pretrained encoder can be downloaded; a local one saved as safetensors (this architecture's
state dict) can initialise it (``text_weights``).
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
from safetensors.torch import load_file
from torch import nn

from stratagen.nn import TransformerBlock
from stratagen.registry import MissingWeightsError

PAD, START = 0, 1


class CaptionVocabulary:
    """Word ids of a fixed set of captions: 0 pads, 1 starts every caption, words from 2 on (sorted)."""

    def __init__(self, captions: Sequence[str]):
        words = sorted({w for caption in captions for w in caption.lower().split()})
        self.ids = {w: i + 2 for i, w in enumerate(words)}
        self.length = 1 + max((len(c.split()) for c in captions), default=0)

    def __len__(self) -> int:
        return len(self.ids) + 2

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """``[B, length]`` ids: START, the words, PAD; an empty caption is START alone (the null caption).
        ValueError for a word outside the vocabulary or a caption longer than ``length - 1`` words."""
        rows = []
        for caption in captions:
            words = caption.lower().split()
            unknown = [w for w in words if w not in self.ids]
            if unknown or len(words) >= self.length:
                raise ValueError(f"caption {caption!r}: " + (f"words outside the vocabulary: {unknown}" if unknown
                                                              else f"longer than {self.length - 1} words"))
            rows.append([START] + [self.ids[w] for w in words] + [PAD] * (self.length - 1 - len(words)))
        return torch.tensor(rows, dtype=torch.long)


class TextEncoder(nn.Module):
    """Caption ids ``[B, M]`` -> token features ``[B, M, width]`` and the pooled feature ``[B, width]``
    (the START position's). Bidirectional pre-norm blocks with learned positions.

    Args:
        vocab_size, length: of the :class:`CaptionVocabulary`.
        width, depth, heads: transformer size (FFN 4 x width).
        weights: a local safetensors state dict of this module to start from (None: random init);
            a missing file is a one-line MissingWeightsError.
    """

    def __init__(self, vocab_size: int, length: int, width: int, depth: int, heads: int, weights: str | None = None):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, width)
        self.position = nn.Parameter(torch.zeros(1, length, width))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, 4 * width) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        if weights is not None:
            if not os.path.isfile(weights):
                raise MissingWeightsError(f"text encoder weights {weights}: no such file")
            self.load_state_dict(load_file(weights))

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embedding(ids) + self.position[:, : ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x, x[:, 0]
