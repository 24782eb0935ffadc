"""Iterative parallel decoding of one token stream (MaskGIT §3.2; StraIT §3.3), as official
MaskGIT does it, with the choice of tokens to keep delegated to a :class:`DecodeOrder`.

Per step t of T, ratio = (t+1)/T. Masked positions get a sampled token; the number of
positions left masked is floor(N0 * gamma(ratio)), N0 being each row's own number of
unknown tokens at the start (so a partially known canvas decodes on the same schedule),
clamped to [1, unknown - 1]. The order scores the sampled tokens and the lowest-scored
unknown ones are masked again; known tokens are never re-masked. The last step keeps
every sampled token.

The arithmetic is the official JAX loop's, all in float32: inside its ``lax.while_loop`` the
step is a traced int32, so ratio = (step + 1) / T is a float32 division; the schedule works
on that float32 ratio and on each row's N0 as float32 (log and exp use it), is clipped to
[1e-6, 1], and floor(N0 * gamma) is a float32 product. (Example: cosine, N0 = 64, T = 18:
after step 12 gamma = 0.49999997 in float32 and 31 tokens stay masked; in float64, 32.)

How the loop is kept fast: every step's masked counts are known before the first step
(:func:`count_plan`), so each step's shapes are fixed in advance and the loop itself never
reads a value back to the host (it could be captured by CUDA graphs or ``torch.compile``
with static shapes). The prior computes its output head only at the positions still masked
(a known token stays known, its logits are never used); tokens are drawn there by
:func:`sample_tokens` (Gumbel-max), and the positions to mask again are chosen with one
``topk``.
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
    """``[B]`` number of positions to leave masked after ``step`` (official MaskGIT arithmetic, float32).

    ``unknown_at_start`` and ``num_unknown`` are ``[B]`` counts of unknown tokens at the start
    of the stage and before this step. A schedule that computes in float64 is rounded to float32.
    """
    n0 = unknown_at_start.to(torch.float32)
    ratio = torch.tensor(step + 1, dtype=torch.float32) / torch.tensor(steps, dtype=torch.float32)
    gamma = schedule(ratio.to(n0.device), n0).to(torch.float32).clamp(1e-6, 1.0)
    keep = torch.floor(n0 * gamma).long()
    keep = torch.maximum(torch.ones_like(keep), torch.minimum(num_unknown - 1, keep))
    return torch.where(num_unknown > 0, keep, 0)


def count_plan(schedule: MaskSchedule, steps: int, unknown_at_start: torch.Tensor) -> torch.Tensor:
    """``[steps + 1, B]``: row ``t`` is the number of positions masked before step ``t`` (row 0:
    ``unknown_at_start``; the last row: 0). Each step leaves exactly :func:`masked_counts` masked,
    so the whole plan is known before decoding starts."""
    rows = [unknown_at_start]
    for step in range(steps - 1):
        rows.append(masked_counts(schedule, step, steps, unknown_at_start, rows[-1]))
    rows.append(torch.zeros_like(unknown_at_start))
    return torch.stack(rows)


def annealed_gumbel(state: DecodeState) -> torch.Tensor:
    """``[B, N]`` Gumbel noise scaled by ``choice_temperature * (1 - ratio)`` (official MaskGIT)."""
    shape = state.sampled.shape
    uniform = torch.rand(shape, generator=state.generator, device=state.sampled.device).clamp(1e-20, 1 - 1e-7)
    return state.choice_temperature * (1 - state.ratio) * -torch.log(-torch.log(uniform))


def sample_tokens(logits: torch.Tensor, temperature: float, generator: torch.Generator, top_k: int = 0,
                  top_p: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row of ``logits`` ``[..., V]`` drawn from ``softmax(logits / temperature)``
    (restricted to the top ``k`` and top ``p``: :func:`~.filtering.sampling_probs`), and its
    log-probability; both ``[...]``.

    Gumbel-max in its exponential-race form: with ``E_v ~ Exp(1)`` independent,
    ``argmax_v p_v / E_v = argmax_v (log p_v + G_v)`` where ``G_v = -log E_v`` is standard Gumbel,
    and it equals ``v`` with probability exactly ``p_v``. This is the algorithm
    ``torch.multinomial`` runs for one sample (same generator, same rows: the same tokens), without
    its validity checks, which read values back to the host at every call.
    """
    probs = sampling_probs(logits.float(), temperature, top_k, top_p)
    race = torch.empty_like(probs).exponential_(generator=generator)
    tokens = torch.div(probs, race, out=race).argmax(dim=-1)
    log_probs = torch.log(probs.gather(-1, tokens[..., None]).squeeze(-1).clamp_min(1e-30))
    return tokens, log_probs


def masked_positions(unknown: torch.Tensor, width: int) -> torch.Tensor:
    """``[B, width]`` positions: each row's unknown positions in increasing order, then (when the
    row has fewer than ``width``) its known positions in increasing order, as padding."""
    slots = torch.arange(unknown.shape[1], device=unknown.device)
    key = torch.where(unknown, slots, slots + unknown.shape[1])
    return key.topk(width, dim=1, largest=False, sorted=True).indices


def remask(sampled: torch.Tensor, scores: torch.Tensor, counts: torch.Tensor, width: int,
           mask_id: int) -> torch.Tensor:
    """``sampled`` ``[B, N]`` with the ``counts[b]`` lowest-scored positions of row ``b`` set to
    ``mask_id``; ``width`` is at least ``counts.max()`` (one ``topk`` instead of two argsorts)."""
    lowest = scores.topk(width, dim=1, largest=False, sorted=True).indices
    chosen = torch.arange(width, device=scores.device) < counts[:, None]
    remasked = torch.zeros_like(sampled, dtype=torch.bool).scatter_(1, lowest, chosen)
    return torch.where(remasked, mask_id, sampled)


def guided_logits(prior: Prior, tokens: torch.Tensor, labels: torch.Tensor, context: object,
                  scale: float, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Classifier-free guided logits ``[B, M, V]`` = cond + scale * (cond - uncond), at
    ``positions`` ``[B, M]`` (default: every position, ``M = N``).

    The conditional and unconditional passes run as one batched forward of ``2B`` rows;
    ``context`` must be encoded for ``cat([labels, null class])``.
    """
    null = torch.full_like(labels, prior.null_class)
    both = None if positions is None else torch.cat([positions, positions])
    cond, uncond = prior(torch.cat([tokens, tokens]), torch.cat([labels, null]), context, both).float().chunk(2)
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
    plan = count_plan(schedule, settings.steps, (ids == mask_id).sum(dim=1))
    widths = plan.amax(dim=1).tolist()  # the one read-back: every step's static shapes
    guided = settings.guidance_scale > 0
    batch_labels = torch.cat([labels, torch.full_like(labels, prior.null_class)]) if guided else labels
    batch_conditions = [torch.cat([c, c]) if guided else c for c in conditions]
    context = prior.encode_conditions(batch_conditions, batch_labels)
    B, N = ids.shape
    trace: list[torch.Tensor] = []
    for step in range(settings.steps):
        scale = settings.guidance_at(step, settings.steps)
        unknown = ids == mask_id
        positions = masked_positions(unknown, widths[step])
        if guided:
            logits = guided_logits(prior, ids, labels, context, scale, positions)
        else:
            logits = prior(ids, labels, context, positions).float()  # a bf16 network's logits: decoding is fp32
        drawn, drawn_log_probs = sample_tokens(logits, settings.temperature, generator, settings.top_k, settings.top_p)
        valid = torch.arange(widths[step], device=ids.device) < plan[step][:, None]  # not padding
        sampled = ids.scatter(1, positions, torch.where(valid, drawn, ids.gather(1, positions)))
        if step == settings.steps - 1:
            ids = sampled
            trace.append(torch.zeros(B, dtype=torch.long, device=ids.device))
            break
        log_probs = torch.zeros(B, N, device=ids.device).scatter(1, positions, torch.where(valid, drawn_log_probs, 0))
        state = DecodeState(step, settings.steps, sampled, log_probs, unknown, labels, conditions,
                            prior.target.height, prior.target.width, settings.choice_temperature, generator)
        scores = torch.where(unknown, order.scores(state, order_context).float(), torch.inf)
        ids = remask(sampled, scores, plan[step + 1], widths[step + 1], mask_id)
        trace.append((ids == mask_id).sum(dim=1))
    return DecodeResult(ids, trace)


def begin_order(model: GenerativeModel, stream: str, settings: StageSettings, labels: torch.Tensor,
                conditions: Sequence[torch.Tensor]) -> tuple[DecodeOrder, object]:
    """The stage's decode order, built and begun (IncompatibleComponentsError if it cannot run)."""
    order = get_registry().build("order", settings.order)
    return order, order.begin(model, stream, labels, conditions)
