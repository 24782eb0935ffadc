"""The component interfaces every tokenizer, prior, sampler and mask schedule implements.

Images are float tensors ``[B, 3, H, W]`` in ``[-1, 1]``; labels are LongTensors ``[B]``
(``num_classes`` is the "no class" id used for classifier-free guidance); token levels are
described in :mod:`stratagen.registry.tokens`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from .errors import IncompatibleComponentsError
from .tokens import LevelSpec, TokenGrids, split_stream_key

#: Marks an unknown (still to be generated) position in a token canvas given to a sampler.
UNKNOWN = -1


# ----------------------------------------------------------------------------- tokenizer
@dataclass
class AutoencoderOutput:
    """What one tokenizer training forward returns.

    Attributes:
        reconstruction: ``[B, 3, H, W]`` decoded images.
        tokens: the token grids the images were quantized to.
        quantizer_loss: codebook + commitment loss summed over levels (StraIT Eq. 2).
        level_stats: per level, ``{"perplexity": float, "usage": float}`` (Eq. 5).
    """

    reconstruction: torch.Tensor
    tokens: TokenGrids
    quantizer_loss: torch.Tensor
    level_stats: dict[str, dict[str, float]]


class Tokenizer(nn.Module, ABC):
    """Images ``[B, 3, H, W]`` <-> one or more integer token levels.

    A tokenizer owns its training losses: :meth:`losses` returns one loss per optimizer
    group named in :meth:`parameter_groups` (e.g. ``generator`` and ``discriminator``).
    """

    @property
    @abstractmethod
    def level_names(self) -> tuple[str, ...]:
        """Names of the levels this tokenizer produces, coarse to fine."""

    @abstractmethod
    def level_specs(self, resolution: int) -> tuple[LevelSpec, ...]:
        """The levels produced for square images of ``resolution`` pixels, coarse to fine."""

    @abstractmethod
    def encode(self, images: torch.Tensor) -> TokenGrids:
        """``[B, 3, H, W]`` -> token grids, one per level."""

    @abstractmethod
    def decode(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Token grids (all levels, or a subset :meth:`can_decode` accepts) -> ``[B, 3, H, W]``."""

    @abstractmethod
    def autoencode(self, images: torch.Tensor) -> AutoencoderOutput:
        """Encode, quantize and decode with straight-through gradients (training forward)."""

    @abstractmethod
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Optimizer groups, e.g. ``{"generator": [...], "discriminator": [...]}``."""

    @abstractmethod
    def losses(self, images: torch.Tensor, step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """One training step's losses keyed by parameter group, and scalars to log."""

    def can_decode(self, levels: set[str]) -> bool:
        """Whether :meth:`decode` accepts exactly these levels; by default all are needed."""
        return levels == set(self.level_names)


# ----------------------------------------------------------------------------- prior
@dataclass
class PriorLoss:
    """Masked token modeling loss of one batch and the scalars worth logging."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


class Prior(nn.Module, ABC):
    """Logits over one level's tokens given its visible tokens, the class and conditions.

    Attributes:
        target: the level it generates.
        conditions: levels it attends to (empty for an unconditional-on-tokens prior).
        num_classes: class labels are ``[0, num_classes)``; ``num_classes`` means "no class".
    """

    target: LevelSpec
    conditions: tuple[LevelSpec, ...]
    num_classes: int

    @property
    def mask_token_id(self) -> int:
        return self.target.codebook_size

    @property
    def null_class(self) -> int:
        return self.num_classes

    @abstractmethod
    def encode_conditions(self, conditions: Sequence[torch.Tensor], labels: torch.Tensor) -> object:
        """Precompute what the condition levels and the class contribute (e.g. cross-attention
        keys and values), once per image: ``conditions[i]`` is ``[B, h_i, w_i]`` for
        ``self.conditions[i]``, ``labels`` ``[B]``. The result is passed to :meth:`forward`
        at every decoding step."""

    @abstractmethod
    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, context: object = None) -> torch.Tensor:
        """``tokens`` ``[B, N]`` (``mask_token_id`` where masked), ``labels`` ``[B]`` ->
        logits ``[B, N, codebook_size]``."""

    @abstractmethod
    def loss(
        self,
        tokens: torch.Tensor,
        labels: torch.Tensor,
        conditions: Sequence[torch.Tensor],
        schedule: "MaskSchedule",
        generator: torch.Generator,
    ) -> PriorLoss:
        """Masked token modeling loss (StraIT Eq. 3/4) for ``tokens`` ``[B, h, w]``."""


# ----------------------------------------------------------------------------- schedule
class MaskSchedule(ABC):
    """gamma(r): the fraction of tokens still masked after progress r in [0, 1].

    gamma(0) = 1 (all masked), gamma(1) = 0, non-increasing (StraIT Table 10).
    ``total`` is the number of tokens being generated; only log and exp use it.
    """

    name: str

    @abstractmethod
    def __call__(self, ratio: torch.Tensor, total: int) -> torch.Tensor:
        """``ratio`` any shape in [0, 1] -> masked fraction, same shape, clamped to [0, 1]."""


# ----------------------------------------------------------------------------- model
@dataclass
class PriorSlot:
    """A prior wired into a model: which stream it generates and which it attends to."""

    prior: Prior
    target: str
    conditions: tuple[str, ...]


@dataclass
class GenerativeModel:
    """Tokenizers and priors of one run, addressed by their config ids.

    Streams are ``"<tokenizer id>.<level>"``; see :func:`stratagen.registry.tokens.stream_key`.
    """

    tokenizers: dict[str, Tokenizer]
    priors: dict[str, PriorSlot]
    resolution: int
    num_classes: int
    #: image size each tokenizer id works at (its streams' grids follow from it)
    resolutions: dict[str, int] = field(default_factory=dict)

    def resolution_of(self, tokenizer_id: str) -> int:
        return self.resolutions.get(tokenizer_id, self.resolution)

    def level_spec(self, stream: str) -> LevelSpec:
        tokenizer_id, level = split_stream_key(stream)
        specs = self.tokenizers[tokenizer_id].level_specs(self.resolution_of(tokenizer_id))
        return next(s for s in specs if s.name == level)

    def prior_for(self, stream: str, decoded: Iterable[str] = ()) -> PriorSlot:
        """The prior generating ``stream`` from the streams in ``decoded``.

        Of several (e.g. the cascade's conditioned f8 prior and an unconditioned one), the
        one that uses the most decoded streams; IncompatibleComponentsError if there is none.
        """
        decoded = set(decoded)
        fitting = [s for s in self.priors.values() if s.target == stream and set(s.conditions) <= decoded]
        if fitting:
            return max(fitting, key=lambda s: len(s.conditions))
        others = [f"{s.target} | {list(s.conditions)}" for s in self.priors.values() if s.target == stream]
        if others:
            given = f"from {sorted(decoded)}" if decoded else "from scratch"
            raise IncompatibleComponentsError(f"no prior generates {stream!r} {given}: its priors are conditioned "
                                              f"on more ({'; '.join(others)})")
        raise IncompatibleComponentsError(
            f"no prior generates stream {stream!r}; priors generate: "
            + ", ".join(s.target for s in self.priors.values()))

    def tokenizer_of(self, stream: str) -> Tokenizer:
        return self.tokenizers[split_stream_key(stream)[0]]


@dataclass
class SampleOutput:
    """Images ``[B, 3, H, W]`` and every generated stream's tokens ``[B, h, w]``."""

    images: torch.Tensor
    tokens: dict[str, torch.Tensor]
    steps: int


# ----------------------------------------------------------------------------- sampler
class Sampler(ABC):
    """Turns a model's priors (and a tokenizer, to decode) into images."""

    @abstractmethod
    def check(self, model: GenerativeModel) -> None:
        """Raise IncompatibleComponentsError, saying why, if this sampler cannot drive ``model``."""

    @abstractmethod
    def sample(
        self,
        model: GenerativeModel,
        labels: torch.Tensor,
        generator: torch.Generator,
        canvas: Mapping[str, torch.Tensor] | None = None,
    ) -> SampleOutput:
        """Generate images for ``labels`` ``[B]``.

        ``canvas`` optionally gives, per stream, a partially known grid ``[B, h, w]`` with
        :data:`UNKNOWN` where tokens are to be generated (inpainting, editing); known tokens
        are kept.
        """
