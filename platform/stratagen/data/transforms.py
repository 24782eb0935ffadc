"""Minimal image transforms shared by the datasets."""

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def resize_center_crop(img: Image.Image, resolution: int) -> Image.Image:
    """Resize the shorter side to ``resolution`` (antialiased bicubic), centre-crop a square."""
    w, h = img.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    if size != img.size:
        img = img.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def to_tensor(img: Image.Image) -> Tensor:
    """PIL image (any mode) -> float32 [3, H, W] in [-1, 1]."""
    array = np.array(img.convert("RGB"), dtype=np.uint8)  # [H, W, 3], a writable copy
    return torch.from_numpy(array).permute(2, 0, 1).float() / 127.5 - 1.0


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Flip [..., H, W] horizontally with probability 1/2."""
    if torch.rand((), generator=generator).item() < 0.5:
        return x.flip(-1)
    return x


def resize_images(images: Tensor, resolution: int | None) -> Tensor:
    """``[B, 3, H, W]`` in [-1, 1] -> ``[B, 3, resolution, resolution]`` (bilinear, antialiased);
    unchanged when ``resolution`` is None or already the size. This is how a tokenizer that
    works at another resolution than the data (``tokenizers.<id>.resolution``) sees images."""
    if resolution is None or tuple(images.shape[-2:]) == (resolution, resolution):
        return images
    return torch.nn.functional.interpolate(images, size=(resolution, resolution), mode="bilinear",
                                           antialias=True, align_corners=False).clamp(-1, 1)
