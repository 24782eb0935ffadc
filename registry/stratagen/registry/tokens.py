"""Typed multi-level token grids: the currency between tokenizers, priors and samplers.

A tokenizer turns an image batch into one or more named *levels*, each an integer grid.
MaskGIT's VQGAN has one level (``tokens``: 16x16 at 256 px), VQGAN2 two (``top`` 16x16
and ``bottom`` 32x32, StraIT §3.1), a VAR-style tokenizer K (``s1`` … ``sK``). A prior
models one level, optionally conditioned on other levels, which may belong to another
tokenizer (the cascade) or to the same tokenizer at another resolution (the upsampler).
Levels are addressed across a whole model by a :class:`StreamKey` ``"<tokenizer>.<level>"``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping

import torch


@dataclass(frozen=True)
class LevelSpec:
    """Shape and vocabulary of one token level.

    Attributes:
        name: level name inside its tokenizer (``"top"``, ``"bottom"``, ``"tokens"``).
        height, width: grid size in tokens.
        codebook_size: number of distinct token ids; valid ids are ``[0, codebook_size)``.
    """

    name: str
    height: int
    width: int
    codebook_size: int

    @property
    def length(self) -> int:
        """Number of tokens in a flattened grid, ``height * width``."""
        return self.height * self.width


class TokenGrids(Mapping[str, torch.Tensor]):
    """An ordered, immutable mapping from level name to a LongTensor ``[B, h, w]``.

    Order is the tokenizer's level order (coarse to fine). All levels share the batch size.
    """

    def __init__(self, levels: Mapping[str, torch.Tensor]):
        if not levels:
            raise ValueError("TokenGrids needs at least one level")
        batch = {t.shape[0] for t in levels.values()}
        if len(batch) != 1:
            raise ValueError(f"levels disagree on batch size: {sorted(batch)}")
        for name, t in levels.items():
            if t.dim() != 3 or t.dtype != torch.long:
                raise ValueError(f"level {name!r} must be a LongTensor [B, h, w], got {t.dtype} {tuple(t.shape)}")
        self._levels = dict(levels)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._levels[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._levels)

    def __len__(self) -> int:
        return len(self._levels)

    @property
    def batch_size(self) -> int:
        return next(iter(self._levels.values())).shape[0]

    def to(self, device: torch.device | str) -> "TokenGrids":
        return TokenGrids({k: v.to(device) for k, v in self._levels.items()})

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self._levels.items())
        return f"TokenGrids({inner})"


def stream_key(tokenizer: str, level: str) -> str:
    """The address of one level in a model: ``"<tokenizer id>.<level name>"``."""
    return f"{tokenizer}.{level}"


def split_stream_key(key: str) -> tuple[str, str]:
    """Inverse of :func:`stream_key`; raises ValueError on a malformed key."""
    tokenizer, dot, level = key.partition(".")
    if not dot or not tokenizer or not level:
        raise ValueError(f"stream {key!r} is not of the form '<tokenizer>.<level>'")
    return tokenizer, level
