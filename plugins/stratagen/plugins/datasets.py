"""Built-in datasets: the synthetic class-conditional shapes and an fsspec image folder.

A dataset factory receives its config fields plus ``split`` ("train" or "eval").
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from stratagen.data import ImageFolder, SyntheticShapes
from stratagen.registry import ComponentConfig, StratagenError, hookimpl

#: the eval split of the synthetic data draws from a disjoint seed stream
EVAL_SEED_OFFSET = 1_000_003


class SyntheticConfig(ComponentConfig):
    name: Literal["synthetic"] = "synthetic"
    num_classes: int = Field(10, ge=1, le=16)
    resolution: int = Field(64, ge=8)
    train_size: int = Field(4000, ge=1)
    eval_size: int = Field(1000, ge=1)
    seed: int = 0


class ImageFolderConfig(ComponentConfig):
    name: Literal["imagefolder"] = "imagefolder"
    root: str = Field(description="training images, one sub-folder per class: a path, a .zip or any fsspec URL")
    eval_root: str | None = Field(None, description="held-out images in the same layout (default: root)")
    num_classes: int = Field(1000, ge=1, description="must equal the number of class folders")
    resolution: int = Field(256, ge=8)
    augment: bool = Field(True, description="training images: resize the shorter side, random crop, random flip, "
                          "drawn anew each epoch (evaluation: centre crop)")
    seed: int = 0


def build_synthetic(*, split: str, num_classes: int, resolution: int, train_size: int, eval_size: int,
                    seed: int) -> SyntheticShapes:
    if split == "train":
        return SyntheticShapes(num_classes, resolution, train_size, seed)
    return SyntheticShapes(num_classes, resolution, eval_size, seed + EVAL_SEED_OFFSET)


def build_image_folder(*, split: str, root: str, eval_root: str | None, num_classes: int, resolution: int,
                       augment: bool, seed: int) -> ImageFolder:
    key, url = ("data.root", root) if split == "train" or eval_root is None else ("data.eval_root", eval_root)
    try:
        folder = ImageFolder(url, resolution, augment=augment and split == "train", seed=seed)
    except ImportError as exc:  # fsspec names the package a protocol needs, e.g. s3fs for s3://
        raise StratagenError(f"{key}: {url}: {exc}") from None
    except (FileNotFoundError, ValueError) as exc:
        raise StratagenError(f"{key}: {exc}") from None
    if folder.num_classes != num_classes:
        raise StratagenError(f"{key}: {url} has {folder.num_classes} class folders but data.num_classes is "
                             f"{num_classes}")
    return folder


@hookimpl
def stratagen_register_datasets(register):
    register("synthetic", build_synthetic, SyntheticConfig)
    register("imagefolder", build_image_folder, ImageFolderConfig)
