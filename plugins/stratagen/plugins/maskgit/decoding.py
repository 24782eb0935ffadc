"""Confidence-based iterative decoding (MaskGIT §3.2; StraIT §3.3), as official MaskGIT does it.

Per step t of T, ratio = (t+1)/T. Masked positions get a sampled token; the number of
positions left masked is floor(N0 * gamma(ratio)), N0 being the number unknown at the
start (so a partially known canvas decodes on the same schedule), clamped to
[1, unknown - 1]. Confidence is the log-probability of the sampled token plus
choice_temperature * (1 - ratio) * Gumbel noise; known tokens are never re-masked. The
last step keeps every sampled token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from pydantic import Field, field_validator

from stratagen.registry import UNKNOWN, ComponentConfig, MaskSchedule, Prior, get_registry


class StageSettings(ComponentConfig):
    """Decoding settings of one level."""

    steps: int = Field(12, ge=1, description="decoding steps T")
    schedule: str = Field("cosine", description="mask schedule gamma (StraIT Table 10)")
    temperature: float = Field(1.0, gt=0, description="softmax temperature of token sampling")
    choice_temperature: float = Field(4.5, ge=0, description="scale of the annealed Gumbel noise on confidences")
    guidance_scale: float = Field(0.0, ge=0, description="classifier-free guidance scale (0: off)")
    guidance_schedule: Literal["constant", "linear"] = Field(
        "constant", description="constant scale, or ramped linearly from 0 to the scale over the steps")

    @field_validator("schedule")
    @classmethod
    def _known_schedule(cls, value: str) -> str:
        names = get_registry().names("schedule")
        if value not in names:
            raise ValueError(f"unknown mask schedule {value!r}; installed: {', '.join(names)}")
        return value


@dataclass
class DecodeResult:
    """Decoded tokens ``[B, N]`` and, per step, the number of positions still masked ``[B]``."""

    tokens: torch.Tensor
    masked_after_step: list[torch.Tensor]


def guided_logits(prior: Prior, tokens: torch.Tensor, labels: torch.Tensor, context: object,
                  scale: float) -> torch.Tensor:
    """Classifier-free guided logits ``[B, N, V]`` = cond + scale * (cond - uncond).

    The conditional and unconditional passes run as one batched forward of ``2B`` rows;
    ``context`` must be encoded for ``cat([labels, null class])``.
    """
    null = torch.full_like(labels, prior.null_class)
    cond, uncond = prior(torch.cat([tokens, tokens]), torch.cat([labels, null]), context).float().chunk(2)
    return cond + scale * (cond - uncond)


@torch.no_grad()
def iterative_decode(
    prior: Prior,
    canvas: torch.Tensor,
    labels: torch.Tensor,
    conditions: Sequence[torch.Tensor],
    settings: StageSettings,
    generator: torch.Generator,
    schedule: MaskSchedule | None = None,
) -> DecodeResult:
    """Fill the :data:`UNKNOWN` positions of ``canvas`` ``[B, N]`` in ``settings.steps`` steps.

    Args:
        prior: gives logits over the level's tokens.
        canvas: known tokens, :data:`UNKNOWN` (-1) where tokens are to be generated.
        labels: ``[B]`` classes.
        conditions: condition levels ``[B, h_i, w_i]`` the prior attends to.
        generator: the only source of randomness (same seed, same tokens).
        schedule: overrides ``settings.schedule`` (already built).
    """
    schedule = schedule or get_registry().build("schedule", settings.schedule)
    mask_id = prior.mask_token_id
    ids = torch.where(canvas == UNKNOWN, mask_id, canvas)
    unknown_at_start = (ids == mask_id).sum(dim=1)
    total = max(int(unknown_at_start.max()), 1)
    guided = settings.guidance_scale > 0
    batch_labels = torch.cat([labels, torch.full_like(labels, prior.null_class)]) if guided else labels
    batch_conditions = [torch.cat([c, c]) if guided else c for c in conditions]
    context = prior.encode_conditions(batch_conditions, batch_labels)
    B, N = ids.shape
    trace: list[torch.Tensor] = []
    for step in range(settings.steps):
        ratio = (step + 1) / settings.steps
        scale = settings.guidance_scale * (ratio if settings.guidance_schedule == "linear" else 1.0)
        if guided:
            logits = guided_logits(prior, ids, labels, context, scale)
        else:
            logits = prior(ids, labels, context).float()
        probs = torch.softmax(logits / settings.temperature, dim=-1)
        sampled = torch.multinomial(probs.view(B * N, -1), 1, generator=generator).view(B, N)
        unknown = ids == mask_id
        sampled = torch.where(unknown, sampled, ids)
        if step == settings.steps - 1:
            ids = sampled
            trace.append(torch.zeros(B, dtype=torch.long, device=ids.device))
            break
        confidence = torch.log(probs.gather(-1, sampled[..., None]).squeeze(-1).clamp_min(1e-30))
        uniform = torch.rand(B, N, generator=generator, device=ids.device).clamp(1e-20, 1 - 1e-7)
        confidence = confidence + settings.choice_temperature * (1 - ratio) * -torch.log(-torch.log(uniform))
        confidence = torch.where(unknown, confidence, torch.inf)
        gamma = float(schedule(torch.tensor(ratio), total))
        num_unknown = unknown.sum(dim=1)
        keep_masked = torch.floor(unknown_at_start * gamma).long()
        keep_masked = torch.maximum(torch.ones_like(keep_masked), torch.minimum(num_unknown - 1, keep_masked))
        keep_masked = torch.where(num_unknown > 0, keep_masked, 0)
        ranks = confidence.argsort(dim=1).argsort(dim=1)
        ids = torch.where(ranks < keep_masked[:, None], mask_id, sampled)
        trace.append((ids == mask_id).sum(dim=1))
    return DecodeResult(ids, trace)
