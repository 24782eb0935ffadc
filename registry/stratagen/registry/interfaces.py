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
from .sampling import Stage
from .tokens import LevelSpec, TokenGrids, resolve_level, split_stream_key

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
        auxiliary_losses: further terms of the reconstruction objective, already weighted, that the
            tokenizer's training adds to its main loss and logs by name (e.g. VQGAN2-R's top-only
            reconstruction); empty for most tokenizers.
    """

    reconstruction: torch.Tensor
    tokens: TokenGrids
    quantizer_loss: torch.Tensor
    level_stats: dict[str, dict[str, float]]
    auxiliary_losses: dict[str, torch.Tensor] = field(default_factory=dict)


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

    def describe(self) -> str:
        """A short note on a build choice the plugin name does not show (``stratagen info``); "" if none."""
        return ""


class MultiScaleTokenizer(Tokenizer):
    """A tokenizer whose levels are K scales of one feature map, each coding what the coarser
    scales left of it (VAR Alg. 1 and 2: residual quantization at growing resolutions).

    Decoding sums the scales' contributions into one feature map f_hat at the finest grid;
    a next-scale prior reads its teacher-forcing inputs, the cumulative f_hat of the coarser
    scales, through :meth:`accumulate` (it never imports the tokenizer plugin).
    """

    @property
    @abstractmethod
    def feature_dim(self) -> int:
        """Channels C of the feature map f_hat."""

    @abstractmethod
    def accumulate(self, features: torch.Tensor | None, scale: int, tokens: torch.Tensor) -> torch.Tensor:
        """f_hat ``[B, C, H, W]`` (finest grid) after adding the contribution of scale ``scale``
        (0-based) with tokens ``[B, h, w]`` to ``features`` (None: the empty map), VAR Alg. 2 line 8.
        Float ``tokens`` ``[B, h, w, V]`` are weights over the codebook (a blend of codes, VAR's
        ``more_smooth``); :meth:`decode` takes them too."""


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
        class_dropout: share of training rows given the null class; 0: its unconditional
            logits are never trained, so classifier-free guidance has nothing to contrast.
    """

    target: LevelSpec
    conditions: tuple[LevelSpec, ...]
    num_classes: int
    class_dropout: float = 0.0

    @property
    def mask_token_id(self) -> int:
        return self.target.codebook_size

    def use_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Called once by the builder with the tokenizer of the target stream. A prior that embeds
        tokens through that tokenizer (a next-scale prior reads its codebook features) keeps a
        reference, not a submodule, so its weights stay the tokenizer's; by default nothing.
        Raise IncompatibleComponentsError if the prior cannot work with ``tokenizer``."""

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
    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, context: object = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """``tokens`` ``[B, N]`` (``mask_token_id`` where masked), ``labels`` ``[B]`` ->
        logits ``[B, N, codebook_size]``; with ``positions`` ``[B, M]`` (LongTensor), the logits
        at those positions only, ``[B, M, codebook_size]`` (decoding needs them where tokens are
        still masked; a prior computes its output head there alone)."""

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

    gamma(0) = 1 (all masked; official exp: 1 - 1/N), gamma(1) = 0, non-increasing (StraIT Table 10).
    ``total`` is the number of tokens being generated, an int or one count per row
    (broadcast against ``ratio``); only log and exp use it.
    """

    name: str

    @abstractmethod
    def __call__(self, ratio: torch.Tensor | float, total: int | torch.Tensor) -> torch.Tensor:
        """``ratio`` any shape in [0, 1] -> masked fraction, clamped to [0, 1]. Decoding rounds it
        to float32 (official MaskGIT computes it in float32; the built-in schedules do too)."""


# ----------------------------------------------------------------------------- decode order
@dataclass
class DecodeState:
    """One decoding step of one stage, as a :class:`DecodeOrder` sees it.

    Attributes:
        step, steps: this step ``t`` (0-based) of ``T``; ``ratio = (t + 1) / T``.
        sampled: ``[B, N]`` the canvas with every unknown position filled by a sampled token.
        log_probs: ``[B, N]`` float32 log-probability of each sampled token under the prior
            (0 where the token was known before this step: its logits are not computed).
        unknown: ``[B, N]`` bool, True where the token was unknown before this step.
        labels: ``[B]`` classes; ``conditions``: the condition grids ``[B, h_i, w_i]``.
        height, width: the grid (``N = height * width``, row-major).
        choice_temperature: scale of the annealed Gumbel noise (MaskGIT: 4.5).
        generator: the only source of randomness.
    """

    step: int
    steps: int
    sampled: torch.Tensor
    log_probs: torch.Tensor
    unknown: torch.Tensor
    labels: torch.Tensor
    conditions: Sequence[torch.Tensor]
    height: int
    width: int
    choice_temperature: float
    generator: torch.Generator

    @property
    def ratio(self) -> float:
        return (self.step + 1) / self.steps


class DecodeOrder(ABC):
    """Which of a step's sampled tokens are kept and which are masked again.

    The decoding loop keeps the unknown positions with the highest :meth:`scores` and
    re-masks the ``k`` lowest, ``k`` given by the mask schedule; known positions are never
    re-masked whatever their score.
    """

    name: str

    def begin(self, model: "GenerativeModel", stream: str, labels: torch.Tensor,
              conditions: Sequence[torch.Tensor]) -> object:
        """Called once per stage before the first step; the result is passed to :meth:`scores`.
        Raise IncompatibleComponentsError if this order cannot decode ``stream`` of ``model``."""
        return None

    @abstractmethod
    def scores(self, state: DecodeState, context: object) -> torch.Tensor:
        """``[B, N]`` float: higher means revealed earlier."""


# ----------------------------------------------------------------------------- critic
class Critic(nn.Module, ABC):
    """Scores how likely each token of a filled-in grid is real rather than sampled
    (Token-Critic, Lezama et al. 2022). Trained after its prior, on the prior's samples.

    Attributes:
        target, conditions, num_classes: as the prior it criticises.
    """

    target: LevelSpec
    conditions: tuple[LevelSpec, ...]
    num_classes: int

    @abstractmethod
    def encode_conditions(self, conditions: Sequence[torch.Tensor], labels: torch.Tensor) -> object:
        """As :meth:`Prior.encode_conditions`: computed once per image."""

    @abstractmethod
    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, context: object = None) -> torch.Tensor:
        """``tokens`` ``[B, N]`` (no mask ids), ``labels`` ``[B]`` -> ``[B, N]`` logits of "sampled"."""

    @abstractmethod
    def loss(self, tokens: torch.Tensor, labels: torch.Tensor, conditions: Sequence[torch.Tensor],
             schedule: "MaskSchedule", generator: torch.Generator) -> "PriorLoss":
        """Mask real ``tokens`` ``[B, h, w]``, refill the masked positions with the prior's samples,
        and classify each position as real or sampled."""


# ----------------------------------------------------------------------------- model
@dataclass
class PriorSlot:
    """A prior wired into a model: which stream it generates and which it attends to."""

    prior: Prior
    target: str
    conditions: tuple[str, ...]


@dataclass
class CriticSlot:
    """A critic wired into a model: the prior whose samples it judges, and that prior's streams."""

    critic: Critic
    prior: str
    target: str
    conditions: tuple[str, ...]


@dataclass
class GenerativeModel:
    """Every trainable component of one run, addressed by its config id, and how they connect.

    Streams are ``"<tokenizer id>.<level>"``; see :func:`stratagen.registry.tokens.stream_key`.
    Built once per run by the engine's builder; training, sampling, evaluation and editing
    read what they need from here rather than from the config.
    """

    tokenizers: dict[str, Tokenizer]
    priors: dict[str, PriorSlot]
    resolution: int
    num_classes: int
    #: image size each tokenizer id works at (its streams' grids follow from it)
    resolutions: dict[str, int] = field(default_factory=dict)
    #: tokenizer id -> the id whose module and weights it uses (one tokenizer at two resolutions)
    shared: dict[str, str] = field(default_factory=dict)
    critics: dict[str, CriticSlot] = field(default_factory=dict)

    def resolution_of(self, tokenizer_id: str) -> int:
        return self.resolutions.get(tokenizer_id, self.resolution)

    def owns_weights(self, tokenizer_id: str) -> bool:
        """Whether ``tokenizer_id`` is trained and saved under its own id (it shares no other's)."""
        return tokenizer_id not in self.shared

    def critic_for(self, stream: str) -> CriticSlot:
        """The critic of ``stream``; IncompatibleComponentsError naming the critics there are."""
        found = [slot for slot in self.critics.values() if slot.target == stream]
        if not found:
            have = ", ".join(f"{cid} ({s.target})" for cid, s in self.critics.items()) or "none"
            raise IncompatibleComponentsError(f"the critic decode order needs a critic of stream {stream!r} "
                                              f"(a 'critics:' section); critics: {have}")
        return found[0]

    def level_spec(self, stream: str) -> LevelSpec:
        """The spec of ``stream`` (a joint stream's: see :func:`~stratagen.registry.tokens.resolve_level`)."""
        tokenizer_id, level = split_stream_key(stream)
        return resolve_level(self.tokenizers[tokenizer_id].level_specs(self.resolution_of(tokenizer_id)), level)

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
    """Images ``[B, 3, H, W]`` and every generated stream's tokens ``[B, h, w]`` (a joint stream's
    per level: ``vq512.top+bottom`` gives ``vq512.top`` and ``vq512.bottom``)."""

    images: torch.Tensor
    tokens: dict[str, torch.Tensor]
    steps: int


# ----------------------------------------------------------------------------- sampler
class Sampler(ABC):
    """Turns a model's priors (and a tokenizer, to decode) into images.

    A sampler decodes its streams in :meth:`stages` and turns them into images with the
    tokenizer :meth:`output_tokenizer` names; editing, evaluation and comparisons rely on both.
    """

    @abstractmethod
    def check(self, model: GenerativeModel) -> None:
        """Raise IncompatibleComponentsError, saying why, if this sampler cannot drive ``model``."""

    @abstractmethod
    def stages(self, model: GenerativeModel) -> list[Stage]:
        """The streams decoded, in order, each with its settings."""

    @abstractmethod
    def output_tokenizer(self, model: GenerativeModel) -> str:
        """Id of the tokenizer that turns the generated streams into images."""

    def describe(self, model: GenerativeModel) -> dict[str, object]:
        """Table 6 columns: tokens and steps per stage, the decode order of each stage, and the
        parameters sampling uses (the stages' priors and critics, the tokenizers' generators;
        no discriminator)."""
        stages = self.stages(model)
        specs = [model.level_spec(stage.stream) for stage in stages]
        used = {split_stream_key(s.stream)[0] for s in stages} | {self.output_tokenizer(model)}
        tokenizers = {id(model.tokenizers[t]): model.tokenizers[t] for t in used}.values()
        params = sum(p.numel() for t in tokenizers for p in t.parameter_groups().get("generator", t.parameters()))
        decoded: list[str] = []
        for stage in stages:
            params += sum(p.numel() for p in model.prior_for(stage.stream, decoded).prior.parameters())
            if stage.settings.order == "critic":
                params += sum(p.numel() for p in model.critic_for(stage.stream).critic.parameters())
            decoded.append(stage.stream)
        return {"tokens": " + ".join(f"{s.height}x{s.width}" for s in specs),
                "steps": "+".join(str(stage.settings.steps) for stage in stages),
                "order": "+".join(stage.settings.order for stage in stages), "params": params}

    def summary(self, model: GenerativeModel) -> str:
        """One line saying how this sampler generates ``model``'s images (``stratagen info``); by
        default each stage's stream, steps and decode order."""
        return "; ".join(f"{s.stream}: {s.settings.steps} steps, {s.settings.order} order" for s in self.stages(model))

    def check_captions(self, model: GenerativeModel) -> None:
        """Raise IncompatibleComponentsError, saying why, unless :meth:`sample` can condition ``model``
        on captions (text prompts) instead of classes. A sampler that can overrides this and takes a
        ``captions`` keyword in :meth:`sample`, one caption per label; callers pass it only after
        this check, so samplers without text conditioning need neither."""
        raise IncompatibleComponentsError("it generates by class and takes no captions; captions need a "
                                          "text-conditioned model (e.g. a var prior with captions)")

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
        are kept. (Samplers whose :meth:`check_captions` passes also take ``captions``.)
        """
