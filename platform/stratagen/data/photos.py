"""Photographs: random crops of the photographs shipped inside the scikit-image wheel.

One class per photograph. Each photograph is first resized (antialiased) so that its
shorter side is ``short_side`` pixels, then cut in two along its longer side: the first
``1 - eval_fraction`` is the *train region*, the rest the *eval region*. The train split
draws crops only inside the train region and the eval split only inside the eval region,
so evaluation never sees a training pixel. Crops are drawn once at construction from a
seeded generator and stored as uint8; nothing is downloaded (the files come with the
``scikit-image`` package, found without importing it).
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from stratagen.data.sampling import Key, sample_index

#: class name -> file in skimage/data (colour photographs, then grey ones converted to RGB)
PHOTOGRAPHS: dict[str, str] = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "retina": "retina.jpg",
    "ihc": "ihc.png",
    "color": "color.png",
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "camera": "camera.png",
    "moon": "moon.png",
    "coins": "coins.png",
    "cell": "cell.png",
}
#: ten photographs that look unlike each other (motorcycle_right is nearly motorcycle_left)
DEFAULT_PHOTOGRAPHS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "hubble_deep_field",
                       "retina", "ihc", "brick", "grass")


def photograph_dir() -> str:
    """``skimage/data`` of the installed scikit-image (located, not imported)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the photos dataset needs the scikit-image package (pip install scikit-image)")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def load_photograph(name: str, short_side: int | None) -> Tensor:
    """Photograph ``name`` as uint8 ``[3, H, W]``, resized so that ``min(H, W) == short_side`` (if given)."""
    if name not in PHOTOGRAPHS:
        raise ValueError(f"unknown photograph {name!r}; known: {', '.join(PHOTOGRAPHS)}")
    image = Image.open(os.path.join(photograph_dir(), PHOTOGRAPHS[name])).convert("RGB")
    if short_side is not None:
        scale = short_side / min(image.size)
        size = (max(short_side, round(image.width * scale)), max(short_side, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class Box:
    """A rectangle ``[top, top + height) x [left, left + width)`` in pixels."""

    top: int
    left: int
    height: int
    width: int

    def overlaps(self, other: Box) -> bool:
        return (self.top < other.top + other.height and other.top < self.top + self.height
                and self.left < other.left + other.width and other.left < self.left + self.width)


def split_regions(height: int, width: int, eval_fraction: float) -> tuple[Box, Box]:
    """Train and eval regions of an ``height x width`` image: cut across its longer side."""
    if width >= height:
        cut = round(width * (1 - eval_fraction))
        return Box(0, 0, height, cut), Box(0, cut, height, width - cut)
    cut = round(height * (1 - eval_fraction))
    return Box(0, 0, cut, width), Box(cut, 0, height - cut, width)


class Photographs(Dataset):
    """``size`` random ``resolution``-px crops, sample ``i`` of class ``i % len(photos)``.

    Args:
        photos: class names, keys of :data:`PHOTOGRAPHS`; class ``c`` is ``photos[c]``.
        resolution: crop side in pixels (after the resize).
        size: number of crops.
        split: ``"train"`` (crops inside the train regions) or ``"eval"`` (inside the eval regions).
        short_side: resize each photograph so its shorter side has this many pixels (``None``: as shipped).
        eval_fraction: share of each photograph's longer side given to the eval region.
        seed: seeds the crop positions (the two splits use separate streams).

    ``__getitem__`` returns ``(image float32 [3, resolution, resolution] in [-1, 1], label)``;
    ``origins[i]`` is crop ``i``'s ``(top, left)`` in its resized photograph and
    ``regions[c]`` the region its class's crops come from.
    """

    def __init__(self, photos: Sequence[str], resolution: int, size: int, split: str,
                 short_side: int | None = None, eval_fraction: float = 0.3, seed: int = 0):
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        self.class_names = list(photos)
        self.num_classes = len(self.class_names)
        self.resolution = resolution
        self.regions: list[Box] = []
        pictures = []
        for name in self.class_names:
            picture = load_photograph(name, short_side)
            train, held_out = split_regions(*picture.shape[1:], eval_fraction)
            region = train if split == "train" else held_out
            if min(region.height, region.width) < resolution:
                raise ValueError(f"photograph {name}: its {split} region is {region.height}x{region.width} px, "
                                 f"smaller than the {resolution}-px crops; raise short_side or change "
                                 f"eval_fraction")
            pictures.append(picture)
            self.regions.append(region)
        generator = torch.Generator().manual_seed(seed * 2 + (split == "eval"))
        self.labels = torch.arange(size) % self.num_classes
        self.origins = torch.empty(size, 2, dtype=torch.long)
        self.images = torch.empty(size, 3, resolution, resolution, dtype=torch.uint8)
        for i, label in enumerate(self.labels.tolist()):
            region = self.regions[label]
            top = region.top + int(torch.randint(region.height - resolution + 1, (), generator=generator))
            left = region.left + int(torch.randint(region.width - resolution + 1, (), generator=generator))
            self.origins[i] = torch.tensor([top, left])
            self.images[i] = pictures[label][:, top: top + resolution, left: left + resolution]

    def crop_box(self, index: int) -> Box:
        top, left = self.origins[index].tolist()
        return Box(top, left, self.resolution, self.resolution)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | Key) -> tuple[Tensor, int]:
        """Returns (image float32 [3, R, R] in [-1, 1], label); the same crop in every epoch."""
        index = sample_index(key)
        return self.images[index].float() / 127.5 - 1.0, int(self.labels[index])
