"""StraIT's stratified sampler (§3.3) and the MaskGIT cascade sampler (§4.3, Table 6)."""
from __future__ import annotations

from stratagen.registry import (JOINT, GenerativeModel, IncompatibleComponentsError, Stage, StageSettings,
                                stream_key)
from stratagen.sampling import StagedSampler


class StratifiedSampler(StagedSampler):
    """Top level from a blank canvas in T_top steps, then the bottom level in T_bottom steps
    conditioned on the finished top (StraIT §3.3; default 18 + 6, Table 7), decoded by the
    same two-level tokenizer. The bottom prior's cross-attention keys and values of the
    top tokens are computed once per image (see ``iterative_decode``).

    Args:
        top, bottom: per-level decoding settings.
        tokenizer: id of the two-level tokenizer; default: the only one the model has.
    """

    def __init__(self, top: StageSettings = StageSettings(steps=18), bottom: StageSettings = StageSettings(steps=6),
                 tokenizer: str | None = None):
        self.top, self.bottom, self.tokenizer = top, bottom, tokenizer

    def _streams(self, model: GenerativeModel) -> tuple[str, str, str]:
        if self.tokenizer is not None:
            if self.tokenizer not in model.tokenizers:
                raise IncompatibleComponentsError(f"sampler.tokenizer {self.tokenizer!r} is not one of the "
                                                  f"model's tokenizers: {', '.join(model.tokenizers)}")
            candidates = [self.tokenizer]
        else:
            candidates = [tid for tid, t in model.tokenizers.items() if len(t.level_names) == 2]
        if len(candidates) != 1 or len(model.tokenizers[candidates[0]].level_names) != 2:
            described = ", ".join(f"{tid!r} ({len(t.level_names)} level{'s' * (len(t.level_names) > 1)}: "
                                  f"{', '.join(t.level_names)})" for tid, t in model.tokenizers.items())
            raise IncompatibleComponentsError(
                "the stratified sampler needs exactly one two-level tokenizer (vqgan2-r or vqgan2-c); "
                f"the model has {described}")
        tid = candidates[0]
        top_level, bottom_level = model.tokenizers[tid].level_names
        return tid, stream_key(tid, top_level), stream_key(tid, bottom_level)

    def check(self, model: GenerativeModel) -> None:
        _, top, bottom = self._streams(model)
        model.prior_for(top)  # decodable from scratch
        if top not in model.prior_for(bottom, {top}).conditions:
            raise IncompatibleComponentsError(f"the bottom prior of {bottom!r} must be conditioned on {top!r} "
                                              f"(priors.<id>.conditions: [{top}])")

    def stages(self, model: GenerativeModel) -> list[Stage]:
        _, top, bottom = self._streams(model)
        return [Stage(top, self.top), Stage(bottom, self.bottom)]

    def output_tokenizer(self, model: GenerativeModel) -> str:
        return self._streams(model)[0]


class UpsampleSampler(StagedSampler):
    """StraIT 256 -> token-level upsampler -> 512 (§4.2 "Higher Resolution in Token-level", Table 4).

    Decodes the low-resolution stratified streams (top, then bottom), then the high-resolution
    levels of the same tokenizer at twice the size conditioned on them, and decodes images with
    the high-resolution tokenizer id. ``form="joint"`` (the paper's: "another upsampling model"
    U, T_upsample = 12) generates both high-resolution levels with one prior as one stream,
    ``<high>.top+bottom``; ``form="two-stage"`` (not the paper's) uses one prior per level, the
    bottom one conditioned on the new top too.

    Args:
        form: ``joint`` or ``two-stage``.
        top, bottom: settings of the 256 px StraIT stages.
        up: the joint upsampler stage (Table 4: 12 steps).
        up_top, up_bottom: the two-stage form's upsampler stages.
        low, high: tokenizer ids of the 256 px and 512 px streams (``high`` shares ``low``'s weights).
    """

    def __init__(self, form: str = "joint", top: StageSettings = StageSettings(steps=18),
                 bottom: StageSettings = StageSettings(steps=6), up: StageSettings = StageSettings(steps=12),
                 up_top: StageSettings = StageSettings(steps=12), up_bottom: StageSettings = StageSettings(steps=12),
                 low: str = "vq", high: str = "vq512"):
        self.form = form
        self.settings = (top, bottom, up) if form == "joint" else (top, bottom, up_top, up_bottom)
        self.low, self.high = low, high

    def _streams(self, model: GenerativeModel) -> list[str]:
        levels = {}
        for tid in (self.low, self.high):
            tokenizer = model.tokenizers.get(tid)
            if tokenizer is None or len(tokenizer.level_names) != 2:
                raise IncompatibleComponentsError(
                    f"the upsample sampler needs two-level tokenizers {self.low!r} (low resolution) and {self.high!r} "
                    f"(high); the model has: {', '.join(model.tokenizers)}")
            levels[tid] = tokenizer.level_names
        low = [stream_key(self.low, level) for level in levels[self.low]]
        if self.form == "joint":
            return low + [stream_key(self.high, JOINT.join(levels[self.high]))]
        return low + [stream_key(self.high, level) for level in levels[self.high]]

    def check(self, model: GenerativeModel) -> None:
        streams = self._streams(model)
        if model.resolution_of(self.high) <= model.resolution_of(self.low):
            raise IncompatibleComponentsError(f"tokenizer {self.high!r} must work at a higher resolution than "
                                              f"{self.low!r}")
        for i, stream in enumerate(streams):
            try:
                model.prior_for(stream, streams[:i])  # says which conditions are missing
            except IncompatibleComponentsError as exc:
                if i < 2:
                    raise
                raise IncompatibleComponentsError(
                    f"{exc} (the upsample sampler's form {self.form!r} needs "
                    + (f"one prior with target {stream}" if self.form == "joint" else "one prior per level")
                    + "; sampler.form: joint or two-stage)") from None

    def stages(self, model: GenerativeModel) -> list[Stage]:
        return [Stage(stream, settings) for stream, settings in zip(self._streams(model), self.settings)]

    def output_tokenizer(self, model: GenerativeModel) -> str:
        return self.high


class CascadeSampler(StagedSampler):
    """Two tokenizers: an f16 prior from scratch, then an f8 prior that cross-attends to the
    f16 tokens; images come from the f8 tokenizer (StraIT §4.3 "Stratified over Cascade")."""

    def __init__(self, top: StageSettings = StageSettings(steps=18), bottom: StageSettings = StageSettings(steps=6)):
        self.top, self.bottom = top, bottom

    def _streams(self, model: GenerativeModel) -> tuple[str, str]:
        pairs = [(c, slot.target) for slot in model.priors.values() for c in slot.conditions
                 if c.split(".", 1)[0] != slot.target.split(".", 1)[0]]
        if len(pairs) != 1:
            raise IncompatibleComponentsError(
                "the cascade sampler needs one prior on the second tokenizer's tokens conditioned on the first "
                "tokenizer's tokens (and a prior generating those); the model has: "
                + "; ".join(f"{s.target} | {list(s.conditions)}" for s in model.priors.values()))
        return pairs[0]

    def check(self, model: GenerativeModel) -> None:
        top, bottom = self._streams(model)
        model.prior_for(top)  # the cascade's first prior is unconditioned
        tid, level = bottom.split(".", 1)
        if not model.tokenizers[tid].can_decode({level}):
            raise IncompatibleComponentsError(f"tokenizer {tid!r} cannot decode level {level!r} alone")

    def stages(self, model: GenerativeModel) -> list[Stage]:
        top, bottom = self._streams(model)
        return [Stage(top, self.top), Stage(bottom, self.bottom)]

    def output_tokenizer(self, model: GenerativeModel) -> str:
        return self._streams(model)[1].split(".", 1)[0]
