"""A sampler that decodes token streams one after another, then decodes images.

:class:`StagedSampler` holds the loop shared by every masked-token sampler: a subclass
says which streams to decode in which order with which settings (:meth:`stages`), which
tokenizer turns them into images (:meth:`output_tokenizer`), and which models it accepts
(:meth:`check`).
"""
from __future__ import annotations

from typing import Mapping

import torch

from stratagen.registry import (UNKNOWN, GenerativeModel, IncompatibleComponentsError, Sampler, SampleOutput,
                                split_grid, split_stream_key, stream_grid, stream_parts)

from .decode import begin_order, iterative_decode


class StagedSampler(Sampler):
    """Decode streams in order, each conditioned on the streams decoded (or given) before it."""

    @torch.no_grad()
    def sample(self, model: GenerativeModel, labels: torch.Tensor, generator: torch.Generator,
               canvas: Mapping[str, torch.Tensor] | None = None) -> SampleOutput:
        self.check(model)
        canvas = dict(canvas or {})
        generated: dict[str, torch.Tensor] = {}
        steps = 0
        for stage in self.stages(model):
            stream, settings = stage.stream, stage.settings
            decoded = set(generated) | {s for s, t in canvas.items() if not (t == UNKNOWN).any()}
            slot = model.prior_for(stream, decoded)
            spec = slot.prior.target
            parts = stream_parts(stream)  # a joint stream's canvas and result are its levels'
            if all(p in canvas for p in parts):
                known = stream_grid({split_stream_key(p)[1]: canvas[p] for p in parts}, split_stream_key(stream)[1])
            else:
                known = torch.full((labels.shape[0], spec.height, spec.width), UNKNOWN, dtype=torch.long,
                                   device=labels.device)
            if not (known == UNKNOWN).any():
                generated.update(_split(model, parts, known))
                continue
            conditions = [generated.get(c, canvas.get(c)) for c in slot.conditions]
            if any(c is None for c in conditions):
                missing = [c for c, t in zip(slot.conditions, conditions) if t is None]
                raise IncompatibleComponentsError(f"stream {stream!r} needs {missing} decoded first")
            order, order_context = begin_order(model, stream, settings, labels, conditions)
            result = iterative_decode(slot.prior, known.flatten(1), labels, conditions, settings, generator,
                                      order, order_context)
            generated.update(_split(model, parts, result.tokens.view_as(known)))
            steps += settings.steps
        tokenizer_id = self.output_tokenizer(model)
        levels = {split_stream_key(s)[1]: t for s, t in {**canvas, **generated}.items()
                  if split_stream_key(s)[0] == tokenizer_id and not (t == UNKNOWN).any()}
        images = model.tokenizers[tokenizer_id].decode(levels)
        return SampleOutput(images=images, tokens=generated, steps=steps)


def _split(model: GenerativeModel, parts: list[str], tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """A stage's tokens per one-level stream: a joint stream's grid split into its levels' grids."""
    if len(parts) == 1:
        return {parts[0]: tokens}
    return dict(zip(parts, split_grid(tokens, [model.level_spec(p) for p in parts])))
