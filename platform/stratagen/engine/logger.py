"""One TensorBoard writer for every stage, and progress bars that stay quiet in CI."""
from __future__ import annotations

import os
from typing import Any, Iterable

import torch


def progress(iterable: Iterable | None = None, **kwargs: Any):
    """A tqdm progress bar; off when not attached to a terminal, in CI, or with STRATAGEN_PROGRESS=0."""
    from tqdm.auto import tqdm

    setting = os.environ.get("STRATAGEN_PROGRESS")
    disable = None if setting is None else setting in ("0", "false")
    if setting is None and os.environ.get("CI"):
        disable = True
    return tqdm(iterable, disable=disable, dynamic_ncols=True, leave=False, **kwargs)


def image_grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """``[B, 3, H, W]`` in [-1, 1] -> one ``[3, H', W']`` grid in [0, 1]."""
    from torchvision.utils import make_grid  # imported on use: torchvision's import costs seconds

    return make_grid(images.detach().float().cpu().clamp(-1, 1) * 0.5 + 0.5, nrow=nrow, padding=1)


class RunLogger:
    """TensorBoard logging for rank 0; a no-op elsewhere (or with ``logdir=None``)."""

    def __init__(self, logdir: str | None):
        self.writer = None
        if logdir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(logdir)

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self.writer:
            for name, value in values.items():
                self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def images(self, tag: str, images: torch.Tensor, step: int, nrow: int = 8) -> None:
        if self.writer:
            self.writer.add_image(tag, image_grid(images, nrow), step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.writer:
            self.writer.add_text(tag, text, step)

    def close(self) -> None:
        if self.writer:
            self.writer.close()
