"""Which samples each training process reads at each step: a pure function of (seed, step).

Every epoch is a seeded permutation of the whole dataset, read as one stream: step ``s`` takes
the global batch at positions ``[s * G, (s + 1) * G)`` of it, and process ``rank`` of ``world``
reads the ``rank``-th of its ``world`` equal slices. The processes' reads of an epoch are
therefore disjoint and cover it, and the global batch of a step is the same whatever the number
of processes, so a run on 8 GPUs sees exactly the batches of a run on one (with gradient
accumulation over the same micro-batches, :mod:`stratagen.engine.training.fit`). The epoch of a position
is ``position // len(dataset)``, so a resumed run starts mid-epoch at exactly the sample an
uninterrupted run would have read (:class:`StepSampler` is told the first step, never the epoch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 64-bit seed mixed from integers (numpy's SeedSequence, so nearby inputs decorrelate)."""
    return int(np.random.SeedSequence([p % 2**63 for p in parts]).generate_state(1, np.uint64)[0])


#: streams of :func:`derive_seed` (distinct first parts keep the uses independent)
EPOCH_ORDER, AUGMENT, VIEW, SHUFFLE = 12, 13, 14, 15


@dataclass(frozen=True)
class Key:
    """One sample to read: dataset ``index`` in ``epoch``, which selects its augmentation
    (``None``: the evaluation view, centre-cropped)."""

    index: int
    epoch: int | None


def sample_index(key: int | Key) -> int:
    """The dataset index a key reads, for datasets whose samples do not change with the epoch."""
    return key.index if isinstance(key, Key) else int(key)


class StepSampler:
    """Batches of :class:`Key` for steps ``start, start + 1, ...`` of one process (endless).

    Step ``s`` of process ``rank`` reads stream positions ``[s * G + rank * batch, s * G + (rank + 1)
    * batch)`` with ``G = world * batch``; position ``p`` is element ``p % n`` of epoch ``p // n``'s
    permutation of the ``n`` samples. Used as a DataLoader ``batch_sampler``.
    """

    def __init__(self, size: int, batch: int, seed: int, rank: int = 0, world: int = 1, start: int = 0):
        if size < world:
            raise ValueError(f"{size} samples cannot be shared by {world} processes")
        self.size, self.batch, self.seed, self.rank, self.world, self.start = size, batch, seed, rank, world, start
        self._order: tuple[int, np.ndarray] | None = None  # the last epoch's order, reused

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The dataset indices in the order the processes read them in ``epoch``."""
        order = self._order  # read once: a prefetching thread may replace it meanwhile
        if order is None or order[0] != epoch:
            rng = np.random.default_rng(derive_seed(EPOCH_ORDER, self.seed, epoch))
            order = self._order = (epoch, rng.permutation(self.size))
        return order[1]

    def keys(self, step: int) -> list[Key]:
        keys: list[Key] = []
        position = (step * self.world + self.rank) * self.batch
        while len(keys) < self.batch:
            epoch, offset = divmod(position + len(keys), self.size)
            take = self.epoch_order(epoch)[offset: offset + self.batch - len(keys)]
            keys.extend(Key(int(i), epoch) for i in take)
        return keys

    def __iter__(self) -> Iterator[list[Key]]:
        step = self.start
        while True:
            yield self.keys(step)
            step += 1
