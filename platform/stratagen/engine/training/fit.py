"""The optimisation loop every trainable component goes through: optimizers, learning-rate
schedule, gradient accumulation, logging, checkpoints and exact resume."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from stratagen.io import checkpoint
from stratagen.io.run import TRAIN_STATE, Run, load_state
from stratagen.registry import Registry

from ..devices.parallel import Replica
from ..devices.processes import Processes, mean_over_processes, step_seed
from ..reporting.logger import RunLogger, progress

log = logging.getLogger("stratagen")


@dataclass(frozen=True)
class MicroBatch:
    """Micro-batch ``index`` of ``count`` that this process computes at ``step``.

    The global batch of a step is ``world x count`` micro-batches of equal size; ``slot`` is this
    one's place among them (``rank * count + index``). Its random draws (masks, dropout) are
    seeded by ``(seed, step, slot)``, so runs that split the same global batch into the same
    micro-batches (8 processes, or one that accumulates 8) draw the same numbers.
    """

    step: int
    index: int
    count: int
    slot: int

    def rows(self, batch: int) -> slice:
        """This micro-batch's rows of the process's ``batch`` rows of the step."""
        size = batch // self.count
        return slice(self.index * size, (self.index + 1) * size)


LossStep = Callable[[MicroBatch], tuple[dict[str, torch.Tensor], dict[str, float]]]


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


def fit(*, run: Run, kind: str, cid: str, plugin: str, replica: Replica, loss_step: LossStep, settings: Any,
        seed: int, procs: Processes, logger: RunLogger, on_images: Callable[[int], None] | None = None,
        resume: bool = True, registry: Registry | None = None) -> None:
    """Optimise ``replica`` for ``settings.steps`` steps, checkpointing and logging as configured.

    Each step runs ``settings.accumulate`` micro-batches; ``loss_step(micro)`` returns one loss
    per parameter group and scalars to log, and each loss is back-propagated into its group
    only (scaled by 1 / ``accumulate``, so a step's gradient is the mean over the global batch).
    """
    groups = replica.groups
    optimizers = {name: make_optimizer(params, settings) for name, params in groups.items()}
    count = settings.accumulate
    start = 0
    state_url = run.component_url(kind, cid, TRAIN_STATE)
    if resume and checkpoint.exists(state_url):
        start = _load_train_state(state_url, replica, optimizers)
        if start == settings.steps and procs.is_main:  # a final checkpoint whose weights were never written
            run.save_weights(kind, cid, replica.module, plugin, start, registry)
    tag = f"{kind}/{cid}"
    bar = progress(range(start, settings.steps), desc=tag, total=settings.steps, initial=start)
    for step in bar:
        lr = learning_rate(settings, step)
        for optimizer in optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        logs: dict[str, float] = {}
        for index in range(count):
            micro = MicroBatch(step, index, count, procs.rank * count + index)
            torch.manual_seed(step_seed(seed, step, 2 + micro.slot))
            with replica.micro_batch(last=index == count - 1):
                losses, micro_logs = loss_step(micro)
                for name, loss in losses.items():
                    if loss.requires_grad:  # several groups: each loss into its own (FSDP wants no inputs)
                        (loss / count).backward(inputs=groups[name] if len(groups) > 1 else None)
                    totals[name] = totals.get(name, 0.0) + loss.item() / count
            for key, value in micro_logs.items():
                logs[key] = logs.get(key, 0.0) + value / count
        for name, optimizer in optimizers.items():
            params = [p for p in groups[name] if p.grad is not None]
            if not params:
                continue
            replica.reduce_gradients(params)
            if settings.grad_clip:
                norm = torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            else:
                norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            logs[f"grad_norm/{name}"] = float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
            optimizer.step()
        done = step + 1
        if done % settings.log_every == 0 or done == settings.steps:
            # losses and scalars of the whole global batch (each process saw its slice of it)
            logs |= mean_over_processes(logs | {f"loss/{name}": value for name, value in totals.items()}, procs)
            if procs.is_main:
                logger.scalars(tag, {**logs, "lr": lr}, done)
                bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items() if k.startswith("loss/")})
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            _save_train_state(run, kind, cid, plugin, replica, optimizers, done, registry)
        if on_images and ((settings.image_every and done % settings.image_every == 0) or done == settings.steps):
            replica.gather()
            if procs.is_main:
                on_images(done)
    bar.close()  # the last step's checkpoint gathered the whole weights into replica.module


def _save_train_state(run: Run, kind: str, cid: str, plugin: str, replica: Replica,
                      optimizers: dict[str, torch.optim.Optimizer], step: int, registry: Registry | None) -> None:
    """Gather the whole weights and optimizer states (every process calls this); process 0 writes them."""
    replica.gather()
    states = {name: replica.optimizer_state(optimizer) for name, optimizer in optimizers.items()}
    if not replica.procs.is_main:
        return
    tensors = {f"model.{k}": v for k, v in replica.module.state_dict().items()}
    meta: dict[str, Any] = {"step": step, "optimizers": {}, "environment": environment()}
    for name, (state, optimizer_meta) in states.items():
        tensors.update({f"optim.{name}.{k}": v for k, v in state.items()})
        meta["optimizers"][name] = optimizer_meta
    # The weights first: a run stopped between the two files resumes from the older checkpoint
    # and rewrites both, whereas final weights behind a final checkpoint would never be rewritten.
    run.save_weights(kind, cid, replica.module, plugin, step, registry)
    checkpoint.save_tensors(run.component_url(kind, cid, TRAIN_STATE), tensors, meta)


def environment() -> dict[str, Any]:
    """What a resumed run must share with the run it continues to continue it bit for bit (besides the
    device and the numbers of processes and loader workers): the torch version and the number of
    intra-op threads (``OMP_NUM_THREADS``; a matmul or reduction splits its sums by thread)."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads()}


def _load_train_state(url: str, replica: Replica, optimizers: dict[str, torch.optim.Optimizer]) -> int:
    tensors, meta = checkpoint.load_tensors(url)
    written, now = meta.get("environment"), environment()
    if written is not None and written != now:
        changed = ", ".join(f"{key} {written.get(key)} -> {now[key]}" for key in now if written.get(key) != now[key])
        log.warning("resuming %s in another environment (%s): training continues, but not bit for bit as an "
                    "uninterrupted run would have (see README, Errors and resuming)", url, changed)
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    load_state(replica.module, model, url, "the configured component")
    states = {}
    for name, optimizer in optimizers.items():
        prefix = f"optim.{name}."
        states[name] = (optimizer, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)},
                        meta["optimizers"][name])
    replica.load(model, states)
    return int(meta["step"])
