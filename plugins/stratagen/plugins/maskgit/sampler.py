"""Samplers that decode token streams one after another, then decode images.

:class:`StagedSampler` holds the loop shared by every masked-token sampler here; a
subclass says which streams to decode in which order (:meth:`stages`), which tokenizer
turns them into images, and which models it accepts (:meth:`check`).
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Mapping

import torch

from stratagen.registry import (UNKNOWN, GenerativeModel, IncompatibleComponentsError, Sampler, SampleOutput,
                                split_stream_key)

from .decoding import StageSettings, iterative_decode


class StagedSampler(Sampler):
    """Decode streams in order, each conditioned on the streams decoded before it."""

    @abstractmethod
    def stages(self, model: GenerativeModel) -> list[tuple[str, StageSettings]]:
        """Streams to decode, in order, with their settings."""

    @abstractmethod
    def output_tokenizer(self, model: GenerativeModel) -> str:
        """Id of the tokenizer that decodes the generated streams into images."""

    @torch.no_grad()
    def sample(self, model: GenerativeModel, labels: torch.Tensor, generator: torch.Generator,
               canvas: Mapping[str, torch.Tensor] | None = None) -> SampleOutput:
        self.check(model)
        canvas = dict(canvas or {})
        generated: dict[str, torch.Tensor] = {}
        steps = 0
        for stream, settings in self.stages(model):
            decoded = set(generated) | {s for s, t in canvas.items() if not (t == UNKNOWN).any()}
            slot = model.prior_for(stream, decoded)
            spec = slot.prior.target
            known = canvas.get(stream)
            if known is None:
                known = torch.full((labels.shape[0], spec.height, spec.width), UNKNOWN, dtype=torch.long,
                                   device=labels.device)
            if not (known == UNKNOWN).any():
                generated[stream] = known
                continue
            conditions = [generated.get(c, canvas.get(c)) for c in slot.conditions]
            if any(c is None for c in conditions):
                missing = [c for c, t in zip(slot.conditions, conditions) if t is None]
                raise IncompatibleComponentsError(f"stream {stream!r} needs {missing} decoded first")
            result = iterative_decode(slot.prior, known.flatten(1), labels, conditions, settings, generator)
            generated[stream] = result.tokens.view_as(known)
            steps += settings.steps
        tokenizer_id = self.output_tokenizer(model)
        levels = {split_stream_key(s)[1]: t for s, t in {**canvas, **generated}.items()
                  if split_stream_key(s)[0] == tokenizer_id and not (t == UNKNOWN).any()}
        images = model.tokenizers[tokenizer_id].decode(levels)
        return SampleOutput(images=images, tokens=generated, steps=steps)


class MaskGITSampler(StagedSampler):
    """MaskGIT: one stream decoded from a blank (or partly known) canvas, then decoded by its tokenizer.

    Args:
        stage: decoding settings.
        stream: the stream to decode, ``"<tokenizer>.<level>"``; by default the only
            prior's target. On a StraIT model, the top level alone (VQGAN2-R decodes it
            without the bottom residual); on the cascade, the f16 stage alone.
    """

    def __init__(self, stage: StageSettings = StageSettings(), stream: str | None = None):
        self.stage = stage
        self.stream = stream

    def _stream(self, model: GenerativeModel) -> str:
        if self.stream is not None:
            return self.stream
        unconditioned = [s.target for s in model.priors.values() if not s.conditions]
        if len(unconditioned) != 1:
            raise IncompatibleComponentsError(
                "the maskgit sampler decodes one stream; set sampler.stream to one of: "
                + ", ".join(s.target for s in model.priors.values()))
        return unconditioned[0]

    def check(self, model: GenerativeModel) -> None:
        stream = self._stream(model)
        try:
            model.prior_for(stream)
        except IncompatibleComponentsError as exc:
            raise IncompatibleComponentsError(f"the maskgit sampler decodes one stream from scratch, but {exc}; "
                                              f"use the stratified or cascade sampler") from None
        tokenizer_id, level = split_stream_key(stream)
        tokenizer = model.tokenizers[tokenizer_id]
        if not tokenizer.can_decode({level}):
            raise IncompatibleComponentsError(
                f"tokenizer {tokenizer_id!r} cannot decode level {level!r} alone "
                f"(it needs {list(tokenizer.level_names)}); use a sampler that generates every level")

    def stages(self, model: GenerativeModel) -> list[tuple[str, StageSettings]]:
        return [(self._stream(model), self.stage)]

    def output_tokenizer(self, model: GenerativeModel) -> str:
        return split_stream_key(self._stream(model))[0]
