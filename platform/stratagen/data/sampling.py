"""Which samples each training process reads at each step: a pure function of (seed, step).

Every process owns a fixed part of the dataset (a seeded permutation of all indices, dealt
out round-robin over the processes), so the parts are disjoint, cover the dataset, and each
process only ever touches its own files or token-cache rows. A process walks through its part
in a fresh seeded order each epoch; its epoch is ``position // len(part)``, so the epoch
advances by itself and a resumed run starts mid-epoch at exactly the sample an
uninterrupted run would have read (:class:`StepSampler` is told the first step, never
the epoch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 64-bit seed mixed from integers (numpy's SeedSequence, so nearby inputs decorrelate)."""
    return int(np.random.SeedSequence([p % 2**63 for p in parts]).generate_state(1, np.uint64)[0])


#: streams of :func:`derive_seed` (distinct first parts keep the uses independent)
PARTITION, EPOCH_ORDER, AUGMENT, VIEW, SHUFFLE = 11, 12, 13, 14, 15


def rank_part(size: int, seed: int, rank: int, world: int) -> np.ndarray:
    """The dataset indices process ``rank`` of ``world`` owns (sorted, int64)."""
    if size < world:
        raise ValueError(f"{size} samples cannot be shared by {world} processes")
    order = np.random.default_rng(derive_seed(PARTITION, seed)).permutation(size)
    return np.sort(order[rank::world])


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

    Step ``s`` of process ``rank`` reads positions ``[s * batch, (s + 1) * batch)`` of the
    process's stream; position ``p`` is element ``p % n`` of epoch ``p // n``'s permutation of
    its part (``n`` samples). Used as a DataLoader ``batch_sampler``.
    """

    def __init__(self, size: int, batch: int, seed: int, rank: int = 0, world: int = 1, start: int = 0):
        self.part = rank_part(size, seed, rank, world)
        self.batch, self.seed, self.rank, self.start = batch, seed, rank, start
        self._order: tuple[int, np.ndarray] | None = None  # the last epoch's order, reused

    def epoch_order(self, epoch: int) -> np.ndarray:
        """This process's indices in the order it reads them in ``epoch``."""
        order = self._order  # read once: a prefetching thread may replace it meanwhile
        if order is None or order[0] != epoch:
            rng = np.random.default_rng(derive_seed(EPOCH_ORDER, self.seed, self.rank, epoch))
            order = self._order = (epoch, self.part[rng.permutation(len(self.part))])
        return order[1]

    def keys(self, step: int) -> list[Key]:
        n = len(self.part)
        keys: list[Key] = []
        position = step * self.batch
        while len(keys) < self.batch:
            epoch, offset = divmod(position + len(keys), n)
            take = self.epoch_order(epoch)[offset: offset + self.batch - len(keys)]
            keys.extend(Key(int(i), epoch) for i in take)
        return keys

    def __iter__(self) -> Iterator[list[Key]]:
        step = self.start
        while True:
            yield self.keys(step)
            step += 1
