"""DataLoaders that feed training: workers decode, the main process trains.

A map-style dataset (ImageFolder, SyntheticShapes) is read through a :class:`StepSampler`, so
the batch of step ``s`` is a pure function of (seed, s, process, number of processes), whatever
the number of workers, and the processes' batches together are the same global batch whatever
their number. Tar shards (:mod:`stratagen.data.shards`) stream, dealt out by process
and worker. Either way a sample whose file cannot be decoded is passed over and its path is
reported with the batch (:attr:`Batch.skipped`), so a few corrupt files in a million neither
stop training nor pass unnoticed (a tar shard that cannot be read to its end counts as one); past
:data:`TOLERATED_SHARE` of the dataset training stops with an error. Images travel between processes as uint8.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from stratagen.data.folder import first_readable
from stratagen.data.sampling import Key, StepSampler
from stratagen.data.shards import TarShards
from stratagen.data.transforms import to_uint8
from stratagen.registry import StratagenError

log = logging.getLogger("stratagen")

PREFETCH = 4  # batches each worker keeps ready
#: training stops once more files (or tar shards) than this share of the dataset, and more than
#: MIN_TOLERATED, could not be read: past that the data is broken, not a few files in it
TOLERATED_SHARE = 0.01
MIN_TOLERATED = 16
T = TypeVar("T")


@dataclass
class Batch:
    """images uint8 [B, 3, H, W] (or [B, K, 3, H, W] for K views), labels int64 [B], and the files
    skipped while reading it."""

    images: Tensor
    labels: Tensor
    skipped: list[str] = field(default_factory=list)

    def pin_memory(self) -> "Batch":
        return Batch(self.images.pin_memory(), self.labels.pin_memory(), self.skipped)

    def float_images(self, device: torch.device, rows: slice = slice(None)) -> Tensor:
        """images float32 [B, 3, H, W] in [-1, 1] on ``device`` (exactly the dataset's values), of
        ``rows`` only (a micro-batch's) where given."""
        return self.images[rows].to(device, non_blocking=True).float() / 127.5 - 1.0


def _uint8(read: Callable[[int], tuple[Tensor, int]], size: int, index: int) -> tuple[Tensor, int, list[str]]:
    (image, label), skipped = first_readable(size, index, read)
    return to_uint8(image), label, skipped


class Reader(Dataset):
    """Reads :class:`Key` s of a map-style dataset for training: (uint8 [3, H, W], label, skipped)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Key) -> tuple[Tensor, int, list[str]]:
        return _uint8(lambda i: self.dataset[Key(i, key.epoch)], len(self.dataset), key.index)


class ViewReader(Dataset):
    """Reads every cached view of a sample (token cache): index -> (uint8 [K, 3, H, W], label, skipped).
    ``epochs`` names the views (``None``: centre crop); several views need ``dataset.views``."""

    def __init__(self, dataset: Any, epochs: list[int | None]):
        self.dataset, self.epochs = dataset, epochs

    def __len__(self) -> int:
        return len(self.dataset)

    def _views(self, index: int) -> tuple[Tensor, int]:
        if len(self.epochs) == 1:
            image, label = self.dataset[Key(index, self.epochs[0])]
            return image[None], label
        return self.dataset.views(index, self.epochs)

    def __getitem__(self, index: int) -> tuple[Tensor, int, list[str]]:
        return _uint8(self._views, len(self.dataset), index)


def collate(items: list[tuple[Tensor, int, list[str]]]) -> Batch:
    return Batch(torch.stack([x for x, _, _ in items]), torch.tensor([y for _, y, _ in items]),
                 [p for _, _, paths in items for p in paths])


def loader_workers(configured: int | None, device: torch.device) -> int:
    """Loader worker processes per training process: ``configured``, or by default up to 4 beside a
    GPU (sharing the cores among the processes on this machine); on a CPU the workers compete with
    training for the same cores, so none below 4 cores per process."""
    if configured is not None:
        return configured
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cpus //= int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by torchrun
    if device.type == "cuda":
        return max(1, min(4, cpus))
    return min(2, cpus // 4)


def image_loader(dataset: Any, batch: int, seed: int, rank: int = 0, world: int = 1, start: int = 0,
                 workers: int = 0, device: torch.device = torch.device("cpu")) -> DataLoader:
    """Endless batches of ``batch`` samples for steps ``start, start + 1, ...`` of process ``rank``.
    Tar shards are dealt to processes and their workers: with fewer shards than that, fewer workers
    read them (the same number on every run with these shards, so resuming stays exact)."""
    if isinstance(dataset, TarShards):
        shards = len(dataset.urls)
        if shards < world:
            raise StratagenError(f"{shards} tar shard(s) cannot feed {world} processes; write smaller shards "
                                 f"(stratagen data pack --shard-size)")
        workers = min(workers, shards // world)
    options: dict[str, Any] = dict(num_workers=workers, collate_fn=collate, pin_memory=device.type == "cuda")
    if workers:
        options.update(prefetch_factor=PREFETCH)
    if isinstance(dataset, TarShards):
        return DataLoader(dataset.stream(seed, rank, world, batch, start), batch_size=batch, **options)
    return DataLoader(Reader(dataset), batch_sampler=StepSampler(len(dataset), batch, seed, rank, world, start),
                      **options)


def view_loader(dataset: Any, indices: range, epochs: list[int | None], batch: int, workers: int = 0,
                device: torch.device = torch.device("cpu")) -> DataLoader:
    """Batches (images uint8 [B, K, 3, H, W]) of samples ``indices`` in order, each in the views ``epochs``."""
    chunks = [list(indices[i: i + batch]) for i in range(0, len(indices), batch)]
    options: dict[str, Any] = dict(prefetch_factor=PREFETCH) if workers else {}
    return DataLoader(ViewReader(dataset, epochs), batch_sampler=chunks, num_workers=workers, collate_fn=collate,
                      pin_memory=device.type == "cuda", **options)


class Prefetched(Generic[T]):
    """``at(step)`` returns ``fetch(step)`` and starts ``fetch(step + 1)`` in a background thread, so
    reading the next step (e.g. token-cache rows from disk) overlaps this step's training; asked
    again for the same step (its micro-batches), it returns the same result. ``fetch`` must be a
    pure function of the step."""

    def __init__(self, fetch: Callable[[int], T]):
        self.fetch = fetch
        self._pool = ThreadPoolExecutor(1)
        self._ahead: tuple[int, Future] | None = None
        self._last: tuple[int, T] | None = None

    def at(self, step: int) -> T:
        if self._last is not None and self._last[0] == step:
            return self._last[1]
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == step:
            result = ahead[1].result()
        else:
            if ahead is not None:
                ahead[1].result()  # a jump: let the stale read finish before reading again
            result = self.fetch(step)
        self._ahead = (step + 1, self._pool.submit(self.fetch, step + 1))
        self._last = (step, result)
        return result


class StepBatches:
    """``at(step)``: the batch of ``step``; steps are expected in order (the same step again returns
    the same batch), and a jump (a resumed run starts at its checkpoint) restarts the loader there.
    Remembers (and logs once) every skipped file."""

    def __init__(self, dataset: Any, batch: int, seed: int, rank: int, world: int, workers: int,
                 device: torch.device):
        self.dataset, self.batch, self.seed, self.rank, self.world = dataset, batch, seed, rank, world
        self.workers, self.device = workers, device
        self.skipped: set[str] = set()
        self._next: int | None = None
        self._batches: Iterator[Batch] | None = None
        self._last: tuple[int, Batch] | None = None

    def at(self, step: int) -> Batch:
        if self._last is not None and self._last[0] == step:
            return self._last[1]
        if self._batches is None or step != self._next:
            self._batches = iter(image_loader(self.dataset, self.batch, self.seed, self.rank, self.world, step,
                                              self.workers, self.device))
        try:
            batch = next(self._batches)
        except StopIteration:  # a stream ends only when a whole epoch of its shards held no readable image
            raise StratagenError(f"{self.dataset.urls[0].rsplit('/', 1)[0]}: the tar shards this process reads "
                                 f"hold no readable image") from None
        self._next = step + 1
        for path in sorted(set(batch.skipped) - self.skipped):
            log.warning("skipped a file that is not a readable image: %s", path)
        self.skipped.update(batch.skipped)
        tolerated = max(MIN_TOLERATED, int(TOLERATED_SHARE * len(self.dataset)))
        if len(self.skipped) > tolerated:
            raise StratagenError(f"{len(self.skipped)} unreadable files or shards (e.g. {sorted(self.skipped)[0]}), "
                                 f"more than the {tolerated} tolerated ({TOLERATED_SHARE:.0%} of "
                                 f"{len(self.dataset)} samples, at least {MIN_TOLERATED}); check the dataset")
        self._last = (step, batch)
        return batch
