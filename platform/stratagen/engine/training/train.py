"""Training of each component kind: tokenizers on images; priors and critics on cached tokens;
and the token cache in between. :mod:`.fit` runs the optimisation; :mod:`stratagen.engine.devices.processes`
says which share of each batch this process takes; :mod:`.plan` orders the stages.
Priors and critics are wrapped in DistributedDataParallel; a tokenizer's gradients (two
optimizers, generator and discriminator, over one forward) are averaged explicitly after
each backward.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from stratagen.data import Prefetched, StepBatches, StepSampler, loader_workers, resize_images
from stratagen.data.sampling import VIEW, derive_seed
from stratagen.io.run import Run
from stratagen.io.tokens import TokenCache
from stratagen.registry import (GenerativeModel, Prior, Registry, StratagenError, Tokenizer, split_stream_key,
                                stream_grid)

from ..devices import precision
from ..devices.parallel import replicate
from ..devices.processes import Processes, per_rank_batch, step_seed
from ..reporting.logger import RunLogger
from .fit import MicroBatch, fit


def stack_batch(dataset: Any, indices: torch.Tensor,
                resolution: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluation views (images ``[B, 3, H, W]``, labels ``[B]``) of ``dataset`` at ``indices``,
    read in this process (previews, benchmarks), resized to ``resolution`` when given."""
    items = [dataset[int(i)] for i in indices]
    return resize_images(torch.stack([x for x, _ in items]), resolution), torch.tensor([y for _, y in items])


def count_skipped(batches: StepBatches, procs: Processes) -> float:
    """Unreadable files met so far (summed over processes; one warning per file where it is met)."""
    count = torch.tensor(float(len(batches.skipped)))
    if procs.world > 1:
        dist.all_reduce(count)
    return float(count)


def autocast(procs: Processes):
    """Training computes in bf16 autocast on CUDA, float32 on the CPU."""
    return precision.autocast(procs.device, torch.bfloat16 if procs.device.type == "cuda" else torch.float32)


def train_tokenizer(run: Run, config: Any, tid: str, tokenizer: Tokenizer, dataset: Any, procs: Processes,
                    logger: RunLogger, resume: bool = True, registry: Registry | None = None) -> None:
    entry = config.tokenizers[tid]
    settings = entry.train
    resolution = entry.resolution or config.data.resolution
    per_rank = per_rank_batch(settings, procs.world, f"tokenizers.{tid}.train")
    preview = stack_batch(dataset, torch.arange(min(8, len(dataset))), resolution)[0].to(procs.device)
    batches = StepBatches(dataset, per_rank, config.run.seed, procs.rank, procs.world, loader_workers(config.loader.workers, procs.device),
                          procs.device)

    def loss_step(micro: MicroBatch):
        images = batches.at(micro.step).float_images(procs.device, micro.rows(per_rank))
        with autocast(procs):
            losses, logs = tokenizer.losses(resize_images(images, resolution), micro.step)
        return losses, {**logs, "data/skipped_files": count_skipped(batches, procs)}

    def on_images(step: int):
        tokenizer.eval()
        with torch.no_grad():
            reconstruction = tokenizer.decode(tokenizer.encode(preview))
        tokenizer.train()
        logger.images(f"tokenizer/{tid}/input_vs_reconstruction", torch.cat([preview, reconstruction]), step,
                      nrow=len(preview))

    tokenizer.train()
    with replicate(tokenizer, None, lambda module: module.parameter_groups(), settings, procs) as replica:
        fit(run=run, kind="tokenizer", cid=tid, plugin=entry.model.name, replica=replica, loss_step=loss_step,
            settings=settings, seed=config.run.seed, procs=procs, logger=logger, on_images=on_images,
            resume=resume, registry=registry)
    tokenizer.eval()


class TokenObjective(nn.Module):
    """Wraps a prior's or critic's ``loss`` as ``forward`` so DistributedDataParallel can drive it."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, tokens, labels, conditions, schedule, generator):
        result = self.module.loss(tokens, labels, conditions, schedule, generator)
        return result.loss, result.logs


def train_on_tokens(run: Run, config: Any, kind: str, cid: str, model: GenerativeModel, schedule: Any,
                    procs: Processes, logger: RunLogger, on_images: Callable[[int], None] | None = None,
                    resume: bool = True, registry: Registry | None = None) -> None:
    """Train prior or critic ``cid`` (``kind`` "prior" or "critic") on the cached tokens of its
    streams: the target level, its conditions and the labels."""
    entry = getattr(config, f"{kind}s")[cid]
    slot = model.priors[cid] if kind == "prior" else model.critics[cid]
    module = slot.prior if kind == "prior" else slot.critic
    streams = [slot.target, *slot.conditions]
    caches = {tid: TokenCache(run.path("tokens", tid, "train")).open() for tid in {s.split(".", 1)[0] for s in streams}}
    sizes = {len(c) for c in caches.values()}
    if len(sizes) != 1:
        raise StratagenError(f"{kind}s.{cid}: the token caches of {', '.join(caches)} hold different numbers of "
                             f"images")
    size, views = sizes.pop(), min(c.views for c in caches.values())
    settings = entry.train
    per_rank = per_rank_batch(settings, procs.world, f"{kind}s.{cid}.train")
    augmentation = getattr(entry, "condition_augmentation", 0.0)
    sources = [model.prior_for(c).prior for c in slot.conditions] if augmentation > 0 else []
    if any(source.conditions for source in sources):
        raise StratagenError(f"priors.{cid}.condition_augmentation: the priors of its conditions must be "
                             f"unconditioned (StraIT's top prior)")

    sampler = StepSampler(size, per_rank, config.run.seed, procs.rank, procs.world)
    # Each image cycles through its cached views, one per epoch, from a seeded first view.
    first_view = np.random.default_rng(derive_seed(VIEW, config.run.seed)).integers(views, size=size)

    def read(step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The token grids (stream -> [B, h, w]) and labels [B] of this process's share of ``step``."""
        keys = sampler.keys(step)
        idx = np.array([k.index for k in keys])
        view = (first_view[idx] + np.array([k.epoch for k in keys])) % views
        grids = {}
        for tid, cache in caches.items():
            levels, labels = cache.gather(idx, view)
            grids.update({s: stream_grid(levels, split_stream_key(s)[1]) for s in streams if s.startswith(f"{tid}.")})
        return grids, labels

    batches = Prefetched(read)

    module.train()
    with replicate(module, TokenObjective, lambda m: {kind: [p for p in m.parameters() if p.requires_grad]},
                   settings, procs) as replica:

        def loss_step(micro: MicroBatch):
            grids, labels = batches.at(micro.step)
            rows = micro.rows(per_rank)
            generator = torch.Generator(procs.device).manual_seed(step_seed(config.run.seed, micro.step,
                                                                            100 + micro.slot))
            tokens = grids[slot.target][rows].to(procs.device)
            labels = labels[rows].to(procs.device)
            conditions = [grids[c][rows].to(procs.device) for c in slot.conditions]
            if sources:
                conditions = augment_conditions(conditions, sources, labels, augmentation, generator)
            with autocast(procs):
                loss, logs = replica.step_module(tokens, labels, conditions, schedule, generator)
            return {kind: loss}, logs

        fit(run=run, kind=kind, cid=cid, plugin=entry.model.name, replica=replica, loss_step=loss_step,
            settings=settings, seed=config.run.seed, procs=procs, logger=logger, on_images=on_images,
            resume=resume, registry=registry)
    module.eval()


@torch.no_grad()
def augment_conditions(conditions: Sequence[torch.Tensor], sources: Sequence[Prior], labels: torch.Tensor,
                       ratio: float, generator: torch.Generator) -> list[torch.Tensor]:
    """Conditional augmentation (StraIT Appendix C, Eq. 6): mask ``ratio`` of each condition
    grid ``[B, h, w]`` and fill the masked positions with the most likely tokens of the prior
    that generates that level (evaluated, not trained, here)."""
    out = []
    for grid, source in zip(conditions, sources):
        flat = grid.flatten(1)
        masked = torch.rand(flat.shape, generator=generator, device=flat.device) < ratio
        was_training = source.training
        source.eval()
        logits = source(torch.where(masked, source.mask_token_id, flat), labels, source.encode_conditions([], labels))
        source.train(was_training)
        out.append(torch.where(masked, logits.argmax(-1), flat).view_as(grid))
    return out
