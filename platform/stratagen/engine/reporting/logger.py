"""One TensorBoard writer for every stage, and progress that a terminal or a log shows."""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator

import torch

#: seconds between two progress lines when the output is a log (not a terminal)
LOG_EVERY_SECONDS = 30.0


def progress(iterable: Iterable, desc: str = "", total: int | None = None, initial: int = 0) -> Any:
    """Progress over ``iterable``: a tqdm bar on a terminal; on a log (stdout is a file or a pipe,
    e.g. ``make demo | tee log``) a line when the stage starts, one every
    :data:`LOG_EVERY_SECONDS` and one when it ends; nothing with ``STRATAGEN_PROGRESS=0``."""
    from tqdm.auto import tqdm

    quiet = os.environ.get("STRATAGEN_PROGRESS", "") in ("0", "false")
    if quiet or sys.stdout.isatty():
        return tqdm(iterable, desc=desc, total=total, initial=initial, disable=quiet, dynamic_ncols=True, leave=False)
    return LineProgress(iterable, desc, total, initial)


def announce(text: str) -> None:
    """One line between progress bars (e.g. which run a comparison trains next); nothing with
    ``STRATAGEN_PROGRESS=0``."""
    from tqdm.auto import tqdm

    if os.environ.get("STRATAGEN_PROGRESS", "") not in ("0", "false"):
        tqdm.write(text)
        sys.stdout.flush()


class LineProgress:
    """Progress as plain lines on stdout (the interface of tqdm that the engine uses)."""

    def __init__(self, iterable: Iterable, desc: str, total: int | None, initial: int):
        self.iterable = iterable
        self.desc = desc
        self.total = total if total is not None else len(iterable) if hasattr(iterable, "__len__") else None
        self.n = initial
        self.postfix = ""

    def __iter__(self) -> Iterator[Any]:
        start = last = time.monotonic()
        self._line("started")
        for item in self.iterable:
            yield item
            self.n += 1
            now = time.monotonic()
            if now - last >= LOG_EVERY_SECONDS:
                last = now
                self._line(f"{now - start:.0f} s")
        self._line(f"done in {time.monotonic() - start:.0f} s")

    def set_postfix(self, values: dict[str, Any]) -> None:
        self.postfix = " " + " ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        """Nothing to clear (tqdm's interface)."""

    def _line(self, note: str) -> None:
        of = f"/{self.total}" if self.total is not None else ""
        print(f"{self.desc}: {self.n}{of}{self.postfix} ({note})", flush=True)


def image_grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """``[B, 3, H, W]`` in [-1, 1] -> one ``[3, H', W']`` grid in [0, 1]."""
    from torchvision.utils import make_grid  # imported on use: torchvision's import costs seconds

    return make_grid(images.detach().float().cpu().clamp(-1, 1) * 0.5 + 0.5, nrow=nrow, padding=1)


def add_png(writer: Any, tag: str, path: str, step: int = 0) -> None:
    """A PNG file (a figure) as an image of a TensorBoard ``SummaryWriter``."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as picture:
        writer.add_image(tag, np.asarray(picture.convert("RGB")), step, dataformats="HWC")


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

    def png(self, tag: str, path: str, step: int = 0) -> None:
        if self.writer:
            add_png(self.writer, tag, path, step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.writer:
            self.writer.add_text(tag, text, step)

    def close(self) -> None:
        if self.writer:
            self.writer.close()
