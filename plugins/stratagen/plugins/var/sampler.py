"""The ``next-scale`` sampler: VAR's coarse-to-fine sampling, one forward per scale (VAR §3.2;
STAR slides "VAR: Auto-regressive sampling": K forward passes with top-k / top-p)."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from stratagen.registry import (UNKNOWN, GenerativeModel, IncompatibleComponentsError, Sampler, SampleOutput, Stage,
                                StageSettings, split_stream_key, stream_key)
from stratagen.sampling import filter_logits, guide, sample_tokens

from .prior import NextScaleTransformer


class NextScaleSampler(Sampler):
    """Scales 1 .. K of a multi-scale tokenizer, each sampled at once from the next-scale prior
    given the coarser ones, then decoded by that tokenizer.

    Every scale is a stage of one step. Tokens are drawn with ``temperature``, ``top_k`` and
    ``top_p``; classifier-free guidance runs the conditional and null-class rows as one batch,
    ramped over the scales by ``guidance_schedule``: ``var`` is VAR's ramp (scale k = 0 .. K-1
    gets ``guidance_scale * k / (K - 1)``), ``linear`` gives ``guidance_scale * (k + 1) / K``.
    ``use_cache: false`` recomputes every prefix instead of the KV cache (same tokens, more
    compute; for checks and timing).

    ``more_smooth`` is VAR's visual option (off in its FID runs): the features each scale adds are
    a Gumbel-softmax blend of the codes (logits sharpened by ``1 + k / (K - 1)``, temperature
    ``max(0.27 (1 - 0.95 k / (K - 1)), 0.005)``, after top-k / top-p) instead of the drawn
    tokens' codes, and the image is decoded from those blends; the tokens returned are the drawn ones.

    Args:
        scales: settings shared by every scale (``steps`` must be 1; schedule, order and
            choice temperature are MaskGIT's and do not apply).
        tokenizer: id of the multi-scale tokenizer; default: the one the next-scale prior generates.
    """

    def __init__(self, scales: StageSettings = StageSettings(steps=1), tokenizer: str | None = None,
                 use_cache: bool = True, more_smooth: bool = False):
        self.settings, self.tokenizer, self.use_cache, self.more_smooth = scales, tokenizer, use_cache, more_smooth

    def _prior(self, model: GenerativeModel) -> tuple[str, NextScaleTransformer]:
        """The tokenizer id and the next-scale prior generating its finest scale."""
        found = [(split_stream_key(s.target)[0], s.prior) for s in model.priors.values()
                 if isinstance(s.prior, NextScaleTransformer)
                 and self.tokenizer in (None, split_stream_key(s.target)[0])]
        if len(found) != 1:
            raise IncompatibleComponentsError(
                "the next-scale sampler needs exactly one next-scale prior (var) "
                + (f"on tokenizer {self.tokenizer!r}" if self.tokenizer else "") + "; the model has: "
                + ", ".join(f"{s.target} ({type(s.prior).__name__})" for s in model.priors.values()))
        return found[0]

    def check(self, model: GenerativeModel) -> None:
        if self.settings.steps != 1:
            raise IncompatibleComponentsError(f"next-scale prediction samples each scale in one step; "
                                              f"sampler.scales.steps is {self.settings.steps}")
        self._prior(model)

    def stages(self, model: GenerativeModel) -> list[Stage]:
        tid, prior = self._prior(model)
        return [Stage(stream_key(tid, s.name), self.settings) for s in prior.scales]

    def output_tokenizer(self, model: GenerativeModel) -> str:
        return self._prior(model)[0]

    def describe(self, model: GenerativeModel) -> dict[str, object]:
        """Table columns; the one prior counts once (it generates every scale)."""
        tid, prior = self._prior(model)
        tokenizer = model.tokenizers[tid]
        params = sum(p.numel() for p in tokenizer.parameter_groups()["generator"]) + \
            sum(p.numel() for p in prior.parameters())
        stages = self.stages(model)
        return {"tokens": " + ".join(f"{s.height}x{s.width}" for s in prior.scales),
                "steps": "+".join("1" for _ in stages), "order": "next-scale", "params": params}

    def summary(self, model: GenerativeModel) -> str:
        """The scales with their token counts, the conditioning and the sampling settings, e.g.
        ``next-scale over 3 scales of vq, one forward each (KV cache): s1 1x1 (1), s2 2x2 (4), s3 4x4 (16),
        21 tokens; class-conditioned; temperature 1.0, top-k off, top-p off, guidance off``."""
        tid, prior = self._prior(model)
        s = self.settings
        scales = ", ".join(f"{spec.name} {spec.height}x{spec.width} ({spec.length})" for spec in prior.scales)
        guidance = f"{s.guidance_scale:g} ({s.guidance_schedule})" if s.guidance_scale > 0 else "off"
        return (f"next-scale over {len(prior.scales)} scales of {tid}, one forward each "
                f"({'KV cache' if self.use_cache else 'no cache: every prefix recomputed'}): {scales}, "
                f"{sum(prior.lengths)} tokens; {'text' if prior.text is not None else 'class'}-conditioned; "
                f"temperature {s.temperature:g}, top-k {s.top_k or 'off'}, top-p {s.top_p if s.top_p < 1 else 'off'}, "
                f"guidance {guidance}" + ("; more_smooth (codes blended)" if self.more_smooth else ""))

    def check_captions(self, model: GenerativeModel) -> None:
        """Refuse a class-conditioned next-scale prior (captions need STAR's text conditioning)."""
        self.check(model)
        if self._prior(model)[1].text is None:
            raise IncompatibleComponentsError("this run's next-scale prior is class-conditioned (no captions in "
                                              "its config): sample it by class, or train one with captions (STAR)")

    @torch.no_grad()
    def sample(self, model: GenerativeModel, labels: torch.Tensor, generator: torch.Generator,
               canvas: Mapping[str, torch.Tensor] | None = None, captions: Sequence[str] | None = None
               ) -> SampleOutput:
        """Known tokens of ``canvas`` (per scale stream, :data:`UNKNOWN` elsewhere) are kept.
        ``captions`` (one per row; text-conditioned priors only, :meth:`check_captions`) replace the
        classes' captions."""
        self.check(model)
        tid, prior = self._prior(model)
        settings = self.settings
        guided = settings.guidance_scale > 0
        null = torch.full_like(labels, prior.null_class)
        rows = torch.cat([labels, null]) if guided else labels
        ids = None
        if captions is not None:
            ids = prior.caption_tokens(captions)
            ids = torch.cat([ids, prior.caption_ids[null]]) if guided else ids
        state = prior.begin(rows, use_cache=self.use_cache, captions=ids)
        generated: dict[str, torch.Tensor] = {}
        decoded: dict[str, torch.Tensor] = {}  # what each scale adds to the features: tokens, or blends
        K = len(prior.scales)
        for k, spec in enumerate(prior.scales):
            logits = prior.scale_logits(state).float()
            if guided:
                logits = guide(*logits.chunk(2), settings.guidance_at(k, K))
            tokens = sample_tokens(logits, settings.temperature, generator, settings.top_k, settings.top_p)[0]
            tokens = tokens.view(-1, spec.height, spec.width)
            stream = stream_key(tid, spec.name)
            known = None if canvas is None else canvas.get(stream)
            if known is not None:
                tokens = torch.where(known == UNKNOWN, tokens, known)
            generated[stream] = tokens
            added = tokens
            if self.more_smooth:
                added = smooth_codes(logits, k / max(K - 1, 1), generator, settings).view(*tokens.shape, -1)
                if known is not None:  # known tokens keep their own code
                    hard = F.one_hot(known.clamp_min(0), added.shape[-1]).to(added.dtype)
                    added = torch.where((known == UNKNOWN)[..., None], added, hard)
            decoded[spec.name] = added
            prior.advance(state, torch.cat([added, added]) if guided else added)
        images = model.tokenizers[tid].decode(decoded)
        return SampleOutput(images=images, tokens=generated, steps=len(prior.scales))


def smooth_codes(logits: torch.Tensor, ratio: float, generator: torch.Generator, settings: StageSettings
                 ) -> torch.Tensor:
    """VAR's ``more_smooth`` weights ``[B, n, V]`` over the codebook of one scale's (guided) logits
    ``[B, n, V]`` at ``ratio = k / (K - 1)``: a Gumbel-softmax of the top-k / top-p filtered logits
    times ``1 + ratio``, at temperature ``max(0.27 (1 - 0.95 ratio), 0.005)`` (VAR's values, after
    MaskGIT's annealing)."""
    filtered = filter_logits(logits / settings.temperature, settings.top_k, settings.top_p) * (1 + ratio)
    gumbel = -torch.empty_like(filtered).exponential_(generator=generator).log()
    return ((filtered + gumbel) / max(0.27 * (1 - 0.95 * ratio), 0.005)).softmax(-1)
