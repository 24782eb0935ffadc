"""Iterative parallel decoding of one token stream (MaskGIT §3.2; StraIT §3.3), as official
MaskGIT does it, with the choice of tokens to keep delegated to a :class:`DecodeOrder`.

Per step t of T, ratio = (t+1)/T. Masked positions get a sampled token; the number of
positions left masked is floor(N0 * gamma(ratio)), N0 being each row's own number of
unknown tokens at the start (so a partially known canvas decodes on the same schedule),
clamped to [1, unknown - 1]. The order scores the sampled tokens and the lowest-scored
unknown ones are masked again; known tokens are never re-masked. The last step keeps
every sampled token.

The arithmetic follows the official JAX loop: the ratio is a double, the schedule is
evaluated in double precision with each row's N0 (log and exp use it), the result is
cast to float32 and multiplied by N0 in float32 before the floor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from stratagen.registry import (UNKNOWN, DecodeOrder, DecodeState, GenerativeModel, MaskSchedule, Prior,
                                StageSettings, get_registry)

from .filtering import guide, sampling_probs


@dataclass
class DecodeResult:
    """Decoded tokens ``[B, N]`` and, per step, the number of positions still masked ``[B]``."""

    tokens: torch.Tensor
    masked_after_step: list[torch.Tensor]


def masked_counts(schedule: MaskSchedule, step: int, steps: int, unknown_at_start: torch.Tensor,
                  num_unknown: torch.Tensor) -> torch.Tensor:
    """``[B]`` number of positions to leave masked after ``step`` (official MaskGIT arithmetic).

    ``unknown_at_start`` and ``num_unknown`` are ``[B]`` counts of unknown tokens at the start
    of the stage and before this step.
    """
    ratio = torch.tensor((step + 1) / steps, dtype=torch.float64)
    gamma = schedule(ratio, unknown_at_start.to(torch.float64)).to(torch.float32)
    keep = torch.floor(unknown_at_start.to(torch.float32) * gamma).long()
    keep = torch.maximum(torch.ones_like(keep), torch.minimum(num_unknown - 1, keep))
    return torch.where(num_unknown > 0, keep, 0)


def annealed_gumbel(state: DecodeState) -> torch.Tensor:
    """``[B, N]`` Gumbel noise scaled by ``choice_temperature * (1 - ratio)`` (official MaskGIT)."""
    shape = state.sampled.shape
    uniform = torch.rand(shape, generator=state.generator, device=state.sampled.device).clamp(1e-20, 1 - 1e-7)
    return state.choice_temperature * (1 - state.ratio) * -torch.log(-torch.log(uniform))


def guided_logits(prior: Prior, tokens: torch.Tensor, labels: torch.Tensor, context: object,
                  scale: float) -> torch.Tensor:
    """Classifier-free guided logits ``[B, N, V]`` = cond + scale * (cond - uncond).

    The conditional and unconditional passes run as one batched forward of ``2B`` rows;
    ``context`` must be encoded for ``cat([labels, null class])``.
    """
    null = torch.full_like(labels, prior.null_class)
    cond, uncond = prior(torch.cat([tokens, tokens]), torch.cat([labels, null]), context).float().chunk(2)
    return guide(cond, uncond, scale)


@torch.no_grad()
def iterative_decode(
    prior: Prior,
    canvas: torch.Tensor,
    labels: torch.Tensor,
    conditions: Sequence[torch.Tensor],
    settings: StageSettings,
    generator: torch.Generator,
    order: DecodeOrder | None = None,
    order_context: object = None,
    schedule: MaskSchedule | None = None,
) -> DecodeResult:
    """Fill the :data:`UNKNOWN` positions of ``canvas`` ``[B, N]`` in ``settings.steps`` steps.

    Args:
        prior: gives logits over the level's tokens.
        canvas: known tokens, :data:`UNKNOWN` (-1) where tokens are to be generated.
        labels: ``[B]`` classes.
        conditions: condition levels ``[B, h_i, w_i]`` the prior attends to.
        generator: the only source of randomness (same seed, same tokens).
        order: decides which sampled tokens each step keeps; ``order_context`` is what its
            ``begin`` returned for this stage. Default: ``settings.order``, built here; an order
            that needs the model (``critic``) must be passed, begun (see :func:`begin_order`).
        schedule: overrides ``settings.schedule`` (already built).
    """
    schedule = schedule or get_registry().build("schedule", settings.schedule)
    order = order or get_registry().build("order", settings.order)
    mask_id = prior.mask_token_id
    ids = torch.where(canvas == UNKNOWN, mask_id, canvas)
    unknown_at_start = (ids == mask_id).sum(dim=1)
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
        probs = sampling_probs(logits, settings.temperature, settings.top_k, settings.top_p)
        sampled = torch.multinomial(probs.view(B * N, -1), 1, generator=generator).view(B, N)
        unknown = ids == mask_id
        sampled = torch.where(unknown, sampled, ids)
        if step == settings.steps - 1:
            ids = sampled
            trace.append(torch.zeros(B, dtype=torch.long, device=ids.device))
            break
        log_probs = torch.log(probs.gather(-1, sampled[..., None]).squeeze(-1).clamp_min(1e-30))
        state = DecodeState(step, settings.steps, sampled, log_probs, unknown, labels, conditions,
                            prior.target.height, prior.target.width, settings.choice_temperature, generator)
        scores = torch.where(unknown, order.scores(state, order_context).float(), torch.inf)
        keep_masked = masked_counts(schedule, step, settings.steps, unknown_at_start, unknown.sum(dim=1))
        ranks = scores.argsort(dim=1).argsort(dim=1)
        ids = torch.where(ranks < keep_masked[:, None], mask_id, sampled)
        trace.append((ids == mask_id).sum(dim=1))
    return DecodeResult(ids, trace)


def begin_order(model: GenerativeModel, stream: str, settings: StageSettings, labels: torch.Tensor,
                conditions: Sequence[torch.Tensor]) -> tuple[DecodeOrder, object]:
    """The stage's decode order, built and begun (IncompatibleComponentsError if it cannot run)."""
    order = get_registry().build("order", settings.order)
    return order, order.begin(model, stream, labels, conditions)
