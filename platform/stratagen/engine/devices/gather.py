"""Work split over the torchrun processes and gathered on rank 0; results rank 0 computes for all.

Sampling for evaluation (``stratagen eval``, ``stratagen compare``) splits a sample set by
batch: batch ``i`` (its labels and its seed, see :func:`stratagen.engine.evaluation.evaluate.generate`)
goes to rank ``i mod world``. Batch ``i``'s images depend on ``i`` alone, not on the number of
processes, so the gathered set equals a single process's, image for image. Round ``r`` samples
batches ``r * world ... r * world + world - 1`` at once and gathers them on rank 0 right away,
so no process holds more than one round of images on its device, and an uneven last round (or
more processes than batches) leaves some processes idle in it.

Images are gathered (as uint8), not features: a metric plugin takes images
(:class:`stratagen.eval.Metric`) and SWD reads pixels, so every metric works unchanged; the
extraction left to rank 0 is one forward pass per image, small beside a sampler's many decoding
steps; 50,000 uint8 images of 256 px take 9.8 GB of host memory on rank 0.

Metrics, reports and files are rank 0's alone (:func:`on_main`); the other processes wait for its
answer on a gloo group with a long timeout (:data:`WAIT_TIMEOUT`), since scoring can take longer
than the default group's collective timeout (10 minutes under nccl).
"""
from __future__ import annotations

import functools
from datetime import timedelta
from typing import Callable, Sequence, TypeVar

import torch
import torch.distributed as dist

from stratagen.registry import StratagenError

from ..reporting.logger import progress
from .processes import Processes

T = TypeVar("T")

#: how long the other processes wait for rank 0's metrics, reports and reference features
WAIT_TIMEOUT = timedelta(hours=12)


def gather_batches(sample: Callable[[int], torch.Tensor], sizes: Sequence[int], procs: Processes,
                   desc: str = "sample") -> list[torch.Tensor] | None:
    """Batch ``i`` of ``len(sizes)`` is ``sample(i)``, uint8 ``[sizes[i], C, H, W]``, computed by rank
    ``i mod world``; every batch is gathered on rank 0.

    Returns:
        on rank 0 every batch in order, contiguous, on the CPU; None on the other ranks.
    """
    count, widest = len(sizes), max(sizes, default=0)
    rounds = range(0, count, procs.world)
    batches: list[torch.Tensor] = []
    for first in progress(rounds, desc=desc) if procs.is_main else rounds:
        index = first + procs.rank
        mine = sample(index).to(procs.device) if index < count else None
        if procs.world == 1:  # contiguous as gathered batches are: a layout can change a metric's last bits
            batches.append(mine.contiguous().cpu())
            continue
        # a process without a batch in this round learns the image shape from the others
        shape = torch.tensor(mine.shape[1:] if mine is not None else (0, 0, 0), device=procs.device)
        dist.all_reduce(shape, dist.ReduceOp.MAX)
        padded = torch.zeros((widest, *shape.tolist()), dtype=torch.uint8, device=procs.device)
        if mine is not None:
            padded[: len(mine)] = mine
        parts = [torch.empty_like(padded) for _ in range(procs.world)] if procs.is_main else None
        dist.gather(padded, parts, dst=0)
        if parts is not None:
            batches += [part[: sizes[first + k]].cpu() for k, part in enumerate(parts) if first + k < count]
    return batches if procs.is_main else None


def on_main(procs: Processes, compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0 only; its value reaches every process (broadcast as a Python object).

    An error in ``compute`` is raised on rank 0 as it is and on the other ranks as a
    :class:`StratagenError` with the same message, so every process leaves the same step together
    (a compare records the same failed variant everywhere and stays in step).
    """
    if procs.world == 1:
        return compute()
    payload: list[tuple[str, T | str] | None] = [None]
    if procs.is_main:
        try:
            payload = [("value", compute())]
        except Exception as exc:
            message = str(exc) if isinstance(exc, StratagenError) else f"{type(exc).__name__}: {exc}"
            dist.broadcast_object_list([("error", message)], src=0, group=_wait_group(dist.group.WORLD))
            raise
    dist.broadcast_object_list(payload, src=0, group=_wait_group(dist.group.WORLD))
    kind, value = payload[0]
    if kind == "error":
        raise StratagenError(value)
    return value


@functools.cache
def _wait_group(world: dist.ProcessGroup) -> dist.ProcessGroup:
    """A gloo group over every process of ``world`` with :data:`WAIT_TIMEOUT` (made once per group)."""
    return dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
