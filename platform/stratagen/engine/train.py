"""Training of each component kind: tokenizers on images; priors and critics on cached tokens;
and the token cache in between. :mod:`.fit` runs the optimisation; :mod:`.distributed`
says which share of each batch this process takes; :mod:`.plan` orders the stages.
Priors and critics are wrapped in DistributedDataParallel; a tokenizer's gradients (two
optimizers, generator and discriminator, over one forward) are averaged explicitly after
each backward.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from stratagen.data.transforms import resize_images
from stratagen.io import checkpoint
from stratagen.io.run import Run
from stratagen.registry import GenerativeModel, Prior, Registry, StratagenError, Tokenizer

from .distributed import Processes, batch_indices, step_seed
from .fit import fit
from .logger import RunLogger, progress


def stack_batch(dataset: Any, indices: torch.Tensor,
                resolution: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[B, 3, H, W]`` and labels ``[B]`` of ``dataset`` at ``indices``, resized to
    ``resolution`` (bilinear, antialiased) when given and different."""
    items = [dataset[int(i)] for i in indices]
    images = resize_images(torch.stack([x for x, _ in items]), resolution)
    return images, torch.tensor([y for _, y in items])


def autocast(procs: Processes):
    """bf16 autocast on CUDA; fp32 on CPU (bf16 is slower than fp32 on this kind of CPU)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=procs.device.type == "cuda")


def train_tokenizer(run: Run, config: Any, tid: str, tokenizer: Tokenizer, dataset: Any, procs: Processes,
                    logger: RunLogger, resume: bool = True, registry: Registry | None = None) -> None:
    entry = config.tokenizers[tid]
    settings = entry.train
    resolution = entry.resolution or config.data.resolution
    per_rank = settings.batch_size // procs.world
    preview = stack_batch(dataset, torch.arange(min(8, len(dataset))), resolution)[0].to(procs.device)

    def loss_step(step: int):
        images, _ = stack_batch(dataset, batch_indices(len(dataset), per_rank * procs.world, step,
                                                       config.run.seed, procs), resolution)
        with autocast(procs):
            return tokenizer.losses(images.to(procs.device), step)

    def on_images(step: int):
        tokenizer.eval()
        with torch.no_grad():
            reconstruction = tokenizer.decode(tokenizer.encode(preview))
        tokenizer.train()
        logger.images(f"tokenizer/{tid}/input_vs_reconstruction", torch.cat([preview, reconstruction]), step,
                      nrow=len(preview))

    tokenizer.train()
    fit(run=run, kind="tokenizer", cid=tid, plugin=entry.model.name, module=tokenizer,
        groups=tokenizer.parameter_groups(), loss_step=loss_step, settings=settings, seed=config.run.seed,
        procs=procs, logger=logger, sync_gradients=True, on_images=on_images, resume=resume, registry=registry)
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
    caches = {tid: run.load_tokens(tid) for tid in {s.split(".", 1)[0] for s in streams}}
    data = {s: caches[s.split(".", 1)[0]][s.split(".", 1)[1]] for s in streams}
    labels_all = caches[slot.target.split(".", 1)[0]]["labels"]
    objective: nn.Module = TokenObjective(module).to(procs.device)
    if procs.world > 1:
        objective = nn.parallel.DistributedDataParallel(objective, device_ids=None if procs.device.type == "cpu"
                                                        else [procs.device.index])
    settings = entry.train
    per_rank = settings.batch_size // procs.world
    augmentation = getattr(entry, "condition_augmentation", 0.0)
    sources = [model.prior_for(c).prior for c in slot.conditions] if augmentation > 0 else []
    if any(source.conditions for source in sources):
        raise StratagenError(f"priors.{cid}.condition_augmentation: the priors of its conditions must be "
                             f"unconditioned (StraIT's top prior)")

    def loss_step(step: int):
        idx = batch_indices(len(labels_all), per_rank * procs.world, step, config.run.seed, procs)
        generator = torch.Generator(procs.device).manual_seed(step_seed(config.run.seed, step, 100 + procs.rank))
        tokens = data[slot.target][idx].to(procs.device)
        labels = labels_all[idx].to(procs.device)
        conditions = [data[c][idx].to(procs.device) for c in slot.conditions]
        if sources:
            conditions = augment_conditions(conditions, sources, labels, augmentation, generator)
        with autocast(procs):
            loss, logs = objective(tokens, labels, conditions, schedule, generator)
        return {kind: loss}, logs

    module.train()
    fit(run=run, kind=kind, cid=cid, plugin=entry.model.name, module=module,
        groups={kind: [p for p in module.parameters() if p.requires_grad]}, loss_step=loss_step,
        settings=settings, seed=config.run.seed, procs=procs, logger=logger, sync_gradients=False,
        on_images=on_images, resume=resume, registry=registry)
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


@torch.no_grad()
def tokenize(run: Run, tid: str, tokenizer: Tokenizer, dataset: Any, split: str, device: torch.device,
             resolution: int | None = None, batch_size: int = 64, shard_size: int = 10_000) -> int:
    """Encode ``dataset`` (resized to ``resolution``) once; write its token grids and labels as
    safetensors shards."""
    tokenizer.eval()
    shard: dict[str, list[torch.Tensor]] = {}
    written = 0
    count = 0

    def flush() -> None:
        nonlocal shard, written
        if shard:
            checkpoint.save_tensors(run.path("tokens", tid, f"{split}-{written:05d}.safetensors"),
                                    {k: torch.cat(v) for k, v in shard.items()}, {"tokenizer": tid})
            written += 1
            shard = {}

    for start in progress(range(0, len(dataset), batch_size), desc=f"tokenize {tid} ({split})"):
        images, labels = stack_batch(dataset, torch.arange(start, min(start + batch_size, len(dataset))), resolution)
        grids = tokenizer.encode(images.to(device))
        for level, grid in grids.items():
            shard.setdefault(level, []).append(grid.cpu())
        shard.setdefault("labels", []).append(labels)
        count += len(labels)
        if sum(len(x) for x in shard["labels"]) >= shard_size:
            flush()
    flush()
    return count
