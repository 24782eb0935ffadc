"""Datasets and transforms. Every dataset yields (image float32 [3, H, W] in [-1, 1], label int)."""

from stratagen.data.folder import ImageFolder
from stratagen.data.synthetic import SyntheticShapes
from stratagen.data.transforms import random_flip, resize_center_crop, to_tensor

__all__ = ["ImageFolder", "SyntheticShapes", "random_flip", "resize_center_crop", "to_tensor"]
