"""PNG output: single images and grids."""
from __future__ import annotations

import os
from typing import Sequence

import torch
from torchvision.utils import save_image

from .logger import image_grid


def save_images(images: torch.Tensor, labels: Sequence[int], folder: str, nrow: int, prefix: str = "",
                stem: str = "class") -> str:
    """Write ``[B, 3, H, W]`` images in [-1, 1] as ``<prefix><stem><c>_<i>.png`` (``c``: the image's
    label, a class or a caption's index) plus ``<prefix>grid.png``."""
    os.makedirs(folder, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        path = os.path.join(folder, f"{prefix}{stem}{label}_{i:04d}.png")
        save_image(image.float().cpu().clamp(-1, 1) * 0.5 + 0.5, path)
    grid = os.path.join(folder, f"{prefix}grid.png")
    save_image(image_grid(images, nrow), grid)
    return grid
