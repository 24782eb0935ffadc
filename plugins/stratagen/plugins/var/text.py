"""STAR's text conditioning (STAR slides, "Textual guidance": a pooled text feature for the start
token and AdaLN, cross-attention to the text tokens in every block).

A :class:`CaptionEncoder` turns captions into ids and ids into features of the prior's width.
Two are built in: the small encoder trained with the prior on a word vocabulary of its captions
(:class:`TextEncoder`, the demo's: no pretrained encoder can be downloaded), and a local pretrained
CLIP text tower (:class:`stratagen.plugins.var.clip.ClipTextEncoder`).
"""
from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from typing import Mapping, Sequence

import torch
from torch import nn

from stratagen.io.checkpoint import mismatches, read_state_dict
from stratagen.nn import TransformerBlock
from stratagen.registry import MissingWeightsError, StratagenError

PAD, START = 0, 1


class CaptionError(StratagenError):
    """A caption the text encoder cannot read (unknown words, too long)."""


def check_tensors(path: str, expected: Mapping[str, Sequence[int]], found: Mapping[str, Sequence[int]],
                  layout: str) -> None:
    """StratagenError naming a few missing, unexpected and reshaped tensors unless the tensors ``found``
    in the safetensors file ``path`` (name -> shape) are exactly the ``expected`` ones of ``layout``."""
    missing, unexpected, reshaped = mismatches(expected, found)
    if missing or unexpected or reshaped:
        parts = [f"{label} {len(keys)} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                 for label, keys in (("missing", missing), ("unexpected", unexpected),
                                     ("other shapes (file vs expected)", reshaped)) if keys]
        raise StratagenError(f"{path}: not {layout}: {'; '.join(parts)}")


class CaptionEncoder(nn.Module, ABC):
    """Captions -> ids ``[B, M]`` (:meth:`tokenize`) -> token features ``[B, M, width]`` and a pooled
    feature ``[B, width]`` (:meth:`forward`), ``width`` being the prior's. The empty caption is the
    null caption (classifier-free guidance)."""

    @abstractmethod
    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        """``[B, M]`` ids of ``captions`` (on the CPU); :class:`CaptionError` for one it cannot read."""

    @abstractmethod
    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids ``[B, M]`` -> token features ``[B, M, width]`` and the pooled feature ``[B, width]``."""


def caption_words(caption: str) -> list[str]:
    """The words of a caption, lower-cased; punctuation separates words and is not one."""
    return re.findall(r"[^\W_]+", caption.lower())


class CaptionVocabulary:
    """Word ids of a fixed set of captions: 0 pads, 1 starts every caption, words from 2 on (sorted)."""

    def __init__(self, captions: Sequence[str]):
        words = sorted({w for caption in captions for w in caption_words(caption)})
        self.ids = {w: i + 2 for i, w in enumerate(words)}
        self.length = 1 + max((len(caption_words(c)) for c in captions), default=0)

    def __len__(self) -> int:
        return len(self.ids) + 2

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """``[B, length]`` ids: START, the words, PAD; an empty caption is START alone (the null caption).
        CaptionError for words outside the vocabulary (naming them and the accepted words) or a
        caption longer than ``length - 1`` words."""
        rows = []
        for caption in captions:
            words = caption_words(caption)
            unknown = [w for w in words if w not in self.ids]
            if unknown:
                raise CaptionError(f"caption {caption!r}: words outside the vocabulary: {', '.join(unknown)}; "
                                   f"the text encoder knows only the {len(self.ids)} words of the prior's "
                                   f"captions (model.captions): {' '.join(self.ids)}")
            if len(words) >= self.length:
                raise CaptionError(f"caption {caption!r}: {len(words)} words; the text encoder reads at most "
                                   f"{self.length - 1} (the longest of the prior's captions)")
            rows.append([START] + [self.ids[w] for w in words] + [PAD] * (self.length - 1 - len(words)))
        return torch.tensor(rows, dtype=torch.long)


class TextEncoder(CaptionEncoder):
    """The small encoder trained with the prior: word ids of :class:`CaptionVocabulary` ``[B, M]``
    -> token features ``[B, M, width]`` and the pooled feature ``[B, width]`` (the START position's).
    Bidirectional pre-norm blocks with learned positions.

    Args:
        captions: the captions whose words make the vocabulary.
        width, depth, heads: transformer size (FFN 4 x width).
        weights: a local safetensors state dict of this module to start from (None: random init);
            a missing file is a one-line MissingWeightsError.
    """

    def __init__(self, captions: Sequence[str], width: int, depth: int, heads: int, weights: str | None = None):
        super().__init__()
        self.vocabulary = CaptionVocabulary(captions)
        self.embedding = nn.Embedding(len(self.vocabulary), width)
        self.position = nn.Parameter(torch.zeros(1, self.vocabulary.length, width))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, 4 * width) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        if weights is not None:
            if not os.path.isfile(weights):
                raise MissingWeightsError(f"text encoder weights {weights}: no such file (expected a safetensors "
                                          f"state dict of the small text encoder)")
            tensors = read_state_dict(weights)
            check_tensors(weights, {k: v.shape for k, v in self.state_dict().items()},
                          {k: v.shape for k, v in tensors.items()}, "a state dict of this small text encoder")
            self.load_state_dict(tensors)

    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        return self.vocabulary.encode(captions)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embedding(ids) + self.position[:, : ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x, x[:, 0]
