"""PNG output: single images and grids."""
from __future__ import annotations

import os
from typing import Sequence

import torch
from torchvision.utils import save_image

from .logger import image_grid


def save_images(images: torch.Tensor, labels: Sequence[int], folder: str, nrow: int, prefix: str = "") -> str:
    """Write ``[B, 3, H, W]`` images in [-1, 1] as ``<prefix>class<c>_<i>.png`` plus ``<prefix>grid.png``."""
    os.makedirs(folder, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        path = os.path.join(folder, f"{prefix}class{label}_{i:04d}.png")
        save_image(image.float().cpu().clamp(-1, 1) * 0.5 + 0.5, path)
    grid = os.path.join(folder, f"{prefix}grid.png")
    save_image(image_grid(images, nrow), grid)
    return grid
