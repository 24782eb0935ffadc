"""Training: tokenizers first, then the token cache, then each prior on cached tokens.

Every step draws its batch, its masks and its dropout from seeds derived from
``(run.seed, step)``, so a resumed run reproduces an uninterrupted one exactly.
Under ``torchrun`` each process takes its slice of the global batch; only rank 0
logs and writes checkpoints. Priors are wrapped in DistributedDataParallel; a
tokenizer's gradients (two optimizers, generator and discriminator, over one
forward) are averaged explicitly after each backward.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from stratagen.registry import GenerativeModel, Prior, Registry, StratagenError, Tokenizer, get_registry

from . import checkpoint
from .logger import RunLogger, progress
from .run import TRAIN_STATE, Run

LossStep = Callable[[int], tuple[dict[str, torch.Tensor], dict[str, float]]]


# ----------------------------------------------------------------------------- processes
@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_processes(device_setting: str) -> Processes:
    """Join the torchrun process group if launched by torchrun (gloo on CPU, nccl on CUDA)."""
    use_cuda = device_setting == "cuda" or (device_setting == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Processes(rank, world, device)


def step_seed(seed: int, step: int, stream: int) -> int:
    """A distinct, reproducible seed per (run seed, step, purpose)."""
    return (seed * 1_000_003 + step * 7919 + stream) % (2**63 - 1)


def batch_indices(size: int, batch: int, step: int, seed: int, procs: Processes) -> torch.Tensor:
    """This process's share of step ``step``'s global batch; epochs are seeded permutations."""
    start = step * batch
    indices = []
    while len(indices) < batch:
        epoch, offset = divmod(start + len(indices), size)
        perm = torch.randperm(size, generator=torch.Generator().manual_seed(step_seed(seed, epoch, 1)))
        indices.extend(perm[offset: offset + batch - len(indices)].tolist())
    per_rank = batch // procs.world
    return torch.tensor(indices[procs.rank * per_rank: (procs.rank + 1) * per_rank])


def learning_rate(settings: Any, step: int) -> float:
    """Linear warmup, then cosine decay to 0 (or constant); Table 12."""
    if settings.warmup_steps and step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    if settings.lr_schedule == "constant":
        return settings.lr
    progress_ = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_)))


def make_optimizer(params: Sequence[nn.Parameter], settings: Any) -> torch.optim.Optimizer:
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, weight_decay=settings.weight_decay)
    cls = torch.optim.AdamW if settings.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=settings.lr, betas=tuple(settings.betas), weight_decay=settings.weight_decay)


def average_gradients(params: Sequence[nn.Parameter], procs: Processes) -> None:
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= procs.world


# ----------------------------------------------------------------------------- loop
def fit(*, run: Run, kind: str, cid: str, plugin: str, module: nn.Module, groups: dict[str, list[nn.Parameter]],
        loss_step: LossStep, settings: Any, seed: int, procs: Processes, logger: RunLogger,
        sync_gradients: bool, on_images: Callable[[int], None] | None = None, resume: bool = True,
        registry: Registry | None = None) -> None:
    """Optimise ``module`` for ``settings.steps`` steps, checkpointing and logging as configured.

    ``loss_step(step)`` returns one loss per parameter group and scalars to log; each
    loss is back-propagated into its group only.
    """
    optimizers = {name: make_optimizer(params, settings) for name, params in groups.items()}
    start = 0
    state_url = run.component_url(kind, cid, TRAIN_STATE)
    if resume and checkpoint.exists(state_url):
        start = _load_train_state(state_url, module, optimizers)
    tag = f"{kind}/{cid}"
    bar = progress(range(start, settings.steps), desc=tag, total=settings.steps, initial=start)
    for step in bar:
        lr = learning_rate(settings, step)
        torch.manual_seed(step_seed(seed, step, 2 + procs.rank))
        losses, logs = loss_step(step)
        for name, loss in losses.items():
            optimizer = optimizers[name]
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            if not loss.requires_grad:
                continue
            loss.backward(inputs=groups[name])
            if sync_gradients and procs.world > 1:
                average_gradients(groups[name], procs)
            if settings.grad_clip:
                logs[f"grad_norm/{name}"] = float(torch.nn.utils.clip_grad_norm_(groups[name], settings.grad_clip))
            else:
                logs[f"grad_norm/{name}"] = float(torch.nn.utils.get_total_norm(
                    [p.grad for p in groups[name] if p.grad is not None]))
            optimizer.step()
            logs[f"loss/{name}"] = loss.item()
        done = step + 1
        if procs.is_main:
            if done % settings.log_every == 0 or done == settings.steps:
                logger.scalars(tag, {**logs, "lr": lr}, done)
                bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items() if k.startswith("loss/")})
            if done % settings.checkpoint_every == 0 or done == settings.steps:
                _save_train_state(run, kind, cid, plugin, module, optimizers, done, registry)
            if on_images and ((settings.image_every and done % settings.image_every == 0) or done == settings.steps):
                on_images(done)
    bar.close()


def _save_train_state(run: Run, kind: str, cid: str, plugin: str, module: nn.Module,
                      optimizers: dict[str, torch.optim.Optimizer], step: int, registry: Registry | None) -> None:
    tensors = {f"model.{k}": v for k, v in module.state_dict().items()}
    meta: dict[str, Any] = {"step": step, "optimizers": {}}
    for name, optimizer in optimizers.items():
        state, optimizer_meta = checkpoint.optimizer_state(optimizer)
        tensors.update({f"optim.{name}.{k}": v for k, v in state.items()})
        meta["optimizers"][name] = optimizer_meta
    checkpoint.save_tensors(run.component_url(kind, cid, TRAIN_STATE), tensors, meta)
    run.save_weights(kind, cid, module, plugin, step, registry)


def _load_train_state(url: str, module: nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> int:
    tensors, meta = checkpoint.load_tensors(url)
    module.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    for name, optimizer in optimizers.items():
        prefix = f"optim.{name}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        checkpoint.load_optimizer_state(optimizer, state, meta["optimizers"][name])
    return int(meta["step"])


# ----------------------------------------------------------------------------- stages
def stack_batch(dataset: Any, indices: torch.Tensor,
                resolution: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[B, 3, H, W]`` and labels ``[B]`` of ``dataset`` at ``indices``, resized to
    ``resolution`` (bilinear, antialiased) when given and different."""
    items = [dataset[int(i)] for i in indices]
    images = torch.stack([x for x, _ in items])
    if resolution is not None and images.shape[-1] != resolution:
        images = torch.nn.functional.interpolate(images, size=(resolution, resolution), mode="bilinear",
                                                 antialias=True, align_corners=False).clamp(-1, 1)
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


class PriorObjective(nn.Module):
    """Wraps ``Prior.loss`` as ``forward`` so DistributedDataParallel can drive it."""

    def __init__(self, prior: Prior):
        super().__init__()
        self.prior = prior

    def forward(self, tokens, labels, conditions, schedule, generator):
        result = self.prior.loss(tokens, labels, conditions, schedule, generator)
        return result.loss, result.logs


def train_prior(run: Run, config: Any, pid: str, model: GenerativeModel, procs: Processes, logger: RunLogger,
                on_images: Callable[[int], None] | None = None, resume: bool = True,
                registry: Registry | None = None) -> None:
    registry = registry or get_registry()
    entry = config.priors[pid]
    slot = model.priors[pid]
    streams = [slot.target, *slot.conditions]
    caches = {tid: run.load_tokens(tid) for tid in {s.split(".", 1)[0] for s in streams}}
    data = {s: caches[s.split(".", 1)[0]][s.split(".", 1)[1]] for s in streams}
    labels_all = caches[slot.target.split(".", 1)[0]]["labels"]
    schedule = registry.build("schedule", entry.mask_schedule)
    objective: nn.Module = PriorObjective(slot.prior).to(procs.device)
    if procs.world > 1:
        objective = nn.parallel.DistributedDataParallel(objective, device_ids=None if procs.device.type == "cpu"
                                                        else [procs.device.index])
    settings = entry.train
    per_rank = settings.batch_size // procs.world
    sources = [model.prior_for(c).prior for c in slot.conditions] if entry.condition_augmentation > 0 else []
    if any(source.conditions for source in sources):
        raise StratagenError(f"priors.{pid}.condition_augmentation: the priors of its conditions must be "
                             f"unconditioned (StraIT's top prior)")

    def loss_step(step: int):
        idx = batch_indices(len(labels_all), per_rank * procs.world, step, config.run.seed, procs)
        generator = torch.Generator(procs.device).manual_seed(step_seed(config.run.seed, step, 100 + procs.rank))
        tokens = data[slot.target][idx].to(procs.device)
        labels = labels_all[idx].to(procs.device)
        conditions = [data[c][idx].to(procs.device) for c in slot.conditions]
        if sources:
            conditions = augment_conditions(conditions, sources, labels, entry.condition_augmentation, generator)
        with autocast(procs):
            loss, logs = objective(tokens, labels, conditions, schedule, generator)
        return {"prior": loss}, logs

    slot.prior.train()
    fit(run=run, kind="prior", cid=pid, plugin=entry.model.name, module=slot.prior,
        groups={"prior": [p for p in slot.prior.parameters() if p.requires_grad]}, loss_step=loss_step,
        settings=settings, seed=config.run.seed, procs=procs, logger=logger, sync_gradients=False,
        on_images=on_images, resume=resume, registry=registry)
    slot.prior.eval()


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
