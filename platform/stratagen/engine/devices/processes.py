"""Where this process stands among the training processes (torchrun), and seeds per step.

Under ``torchrun`` each process takes its slice of the global batch
(:mod:`stratagen.data.sampling`); only rank 0 logs and writes checkpoints. Every micro-batch draws
its masks and dropout from seeds derived from ``(run.seed, step, slot)``
(:class:`stratagen.engine.training.fit.MicroBatch`), so a resumed run reproduces an uninterrupted one exactly.
"""
from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn

from stratagen.registry import StratagenError


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_processes() -> int:
    """How many training processes torchrun launched (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's rank among them (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


#: environment variable: seconds a collective waits for the other processes before it fails
TIMEOUT_VARIABLE = "STRATAGEN_COLLECTIVE_TIMEOUT"
#: the longest timeout taken (the backends hold it as a C int of milliseconds, or near it)
MAX_TIMEOUT_SECONDS = 365 * 24 * 3600
#: the shortest: the processes must at least meet (below a second the rendezvous itself times out,
#: with a C++ stack trace rather than an error line)
MIN_TIMEOUT_SECONDS = 1.0


def collective_timeout() -> datetime.timedelta | None:
    """``STRATAGEN_COLLECTIVE_TIMEOUT`` (seconds), or None for the backend's default (PyTorch's:
    30 minutes under gloo, 10 under nccl)."""
    value = os.environ.get(TIMEOUT_VARIABLE, "")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not MIN_TIMEOUT_SECONDS <= seconds <= MAX_TIMEOUT_SECONDS:  # nan and inf too
        raise StratagenError(f"{TIMEOUT_VARIABLE}={value!r}: a number of seconds, at least {MIN_TIMEOUT_SECONDS:g} "
                             f"and at most {MAX_TIMEOUT_SECONDS:,} (a year) (unset: the backend's default, 30 min under gloo "
                             f"and 10 under nccl)")
    return datetime.timedelta(seconds=seconds)


def setup_processes(device_setting: str) -> Processes:
    """Join the torchrun process group if launched by torchrun (gloo on CPU, nccl on CUDA), with
    :func:`collective_timeout`; the group is destroyed when the process exits."""
    use_cuda = device_setting == "cuda" or (device_setting == "auto" and torch.cuda.is_available())
    timeout = collective_timeout()
    world = launched_processes()
    rank = launched_rank()
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
        # left to the interpreter's teardown, gloo's worker threads now and then abort the process
        # ("terminate called without an active exception", about 1 exit in 8 on 2 CPU processes)
        atexit.register(_leave_processes)
    return Processes(rank, world, device)


def _leave_processes() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def per_rank_batch(settings: Any, world: int, key: str) -> int:
    """Each of ``world`` processes' share of the global batch ``settings.batch_size``; refused unless
    it splits exactly into ``settings.accumulate`` equal micro-batches per process (no sample is
    lost, no micro-batch is empty, and every sample weighs the same in the step's gradient)."""
    parts = world * settings.accumulate
    if settings.batch_size % parts:
        processes = f"{world} process{'es' if world > 1 else ''}"
        split = f"{processes} x {settings.accumulate} micro-batches" if settings.accumulate > 1 else processes
        raise StratagenError(f"{key}.batch_size: {settings.batch_size} does not split over {split}; "
                             f"use a multiple of {parts}")
    return settings.batch_size // world


def step_seed(seed: int, step: int, stream: int) -> int:
    """A distinct, reproducible seed per (run seed, step, purpose)."""
    return (seed * 1_000_003 + step * 7919 + stream) % (2**63 - 1)


def average_gradients(params: Sequence[nn.Parameter], procs: Processes) -> None:
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= procs.world


def mean_over_processes(values: dict[str, float], procs: Processes) -> dict[str, float]:
    """Each value's mean over the processes (every process calls this, with the same keys)."""
    if procs.world == 1 or not values:
        return values
    keys = sorted(values)
    total = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=procs.device)
    dist.all_reduce(total)
    return dict(zip(keys, (total / procs.world).tolist()))


def barrier(procs: Processes) -> None:
    """Wait for every process (no-op in a single process)."""
    if procs.world > 1:
        dist.barrier()
