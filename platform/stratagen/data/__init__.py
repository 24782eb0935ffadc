"""Datasets, transforms and loaders. Every dataset yields (image float32 [3, H, W] in [-1, 1], label int)."""

from stratagen.data.folder import ImageFolder, UnreadableImage
from stratagen.data.loader import Batch, Prefetched, StepBatches, image_loader, loader_workers
from stratagen.data.sampling import Key, StepSampler
from stratagen.data.synthetic import SyntheticShapes
from stratagen.data.transforms import resize_images, resize_center_crop, resize_random_crop_flip, to_tensor

__all__ = ["Batch", "ImageFolder", "Key", "Prefetched", "StepBatches", "StepSampler", "SyntheticShapes", "UnreadableImage",
           "loader_workers", "image_loader", "resize_images", "resize_center_crop", "resize_random_crop_flip", "to_tensor"]
