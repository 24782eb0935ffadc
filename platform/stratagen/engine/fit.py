"""The optimisation loop every trainable component goes through: optimizers, learning-rate
schedule, logging, checkpoints and exact resume."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from stratagen.io import checkpoint
from stratagen.io.run import TRAIN_STATE, Run, load_state
from stratagen.registry import Registry

from .distributed import Processes, average_gradients, step_seed
from .logger import RunLogger, progress

LossStep = Callable[[int], tuple[dict[str, torch.Tensor], dict[str, float]]]


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
        if start == settings.steps and procs.is_main:  # a final checkpoint whose weights were never written
            run.save_weights(kind, cid, module, plugin, start, registry)
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
    # The weights first: a run stopped between the two files resumes from the older checkpoint
    # and rewrites both, whereas final weights behind a final checkpoint would never be rewritten.
    run.save_weights(kind, cid, module, plugin, step, registry)
    checkpoint.save_tensors(run.component_url(kind, cid, TRAIN_STATE), tensors, meta)


def _load_train_state(url: str, module: nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> int:
    tensors, meta = checkpoint.load_tensors(url)
    load_state(module, {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, url,
               "the configured component")
    for name, optimizer in optimizers.items():
        prefix = f"optim.{name}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        checkpoint.load_optimizer_state(optimizer, state, meta["optimizers"][name])
    return int(meta["step"])
