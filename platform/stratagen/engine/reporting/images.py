"""PNG output: single images and grids, a folder of them replaced as a whole."""
from __future__ import annotations

import os
import re
import shutil
import uuid
from typing import Sequence

import torch
from torchvision.utils import save_image

from stratagen.io.checkpoint import TEMPORARY
from stratagen.registry import StratagenError

from .logger import image_grid

#: the files :func:`save_images` writes; a folder holding anything else is not replaced
SAMPLE_FILE = re.compile(r"(?:class|caption)\d+_\d+\.png|grid\.png")


def check_sample_folder(folder: str) -> None:
    """Refuse a folder that holds files :func:`save_images` did not write (they would be lost when
    the folder's images are replaced) or that is a file."""
    if not os.path.exists(folder):
        return
    if not os.path.isdir(folder):
        raise StratagenError(f"{folder} is a file; give a folder (it is created if missing)")
    others = sorted(name for name in os.listdir(folder) if not SAMPLE_FILE.fullmatch(name))
    if others:
        raise StratagenError(f"{folder} holds other files than samples (e.g. {others[0]}); give a new or empty "
                             f"folder, or one that only earlier samples were written to (they are replaced)")


def save_images(images: torch.Tensor, labels: Sequence[int], folder: str, nrow: int, stem: str = "class") -> str:
    """Write ``[B, 3, H, W]`` images in [-1, 1] as ``<stem><c>_<i>.png`` (``c``: the image's label, a
    class or a caption's index) plus ``grid.png``, replacing the folder's earlier samples as a whole:
    the images are written into a temporary sibling folder that then takes the folder's place, so
    the folder never holds torn files or a mix of two samplings. Returns the grid's path."""
    check_sample_folder(folder)
    folder = folder.rstrip("/") or "/"
    staging = f"{folder}{TEMPORARY}{uuid.uuid4().hex[:8]}"
    os.makedirs(staging)
    try:
        for i, (image, label) in enumerate(zip(images, labels)):
            save_image(image.float().cpu().clamp(-1, 1) * 0.5 + 0.5, os.path.join(staging, f"{stem}{label}_{i:04d}.png"))
        save_image(image_grid(images, nrow), os.path.join(staging, "grid.png"))
        aside = f"{staging}-old"
        if os.path.exists(folder):
            os.rename(folder, aside)
        try:
            os.rename(staging, folder)
        except OSError:
            if os.path.exists(aside):
                os.rename(aside, folder)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return os.path.join(folder, "grid.png")
