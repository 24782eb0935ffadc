"""Built-in datasets: the synthetic class-conditional shapes, an fsspec image folder and tar
shards in the WebDataset layout (write them with ``stratagen data pack FOLDER OUT``).

A dataset factory receives its config fields plus ``split`` ("train" or "eval").
"""
from __future__ import annotations

from typing import Callable, Literal, TypeVar

from pydantic import Field

from stratagen.data import ImageFolder, SyntheticShapes
from stratagen.data.synthetic import MAX_POSITION_JITTER, MAX_SIZE_JITTER, POSITION_JITTER, SIZE_JITTER
from stratagen.data.shards import TarShards
from stratagen.registry import ComponentConfig, StratagenError, hookimpl

T = TypeVar("T", ImageFolder, TarShards)

#: the eval split of the synthetic data draws from a disjoint seed stream
EVAL_SEED_OFFSET = 1_000_003


class SyntheticConfig(ComponentConfig):
    name: Literal["synthetic"] = "synthetic"
    num_classes: int = Field(10, ge=1, le=16)
    resolution: int = Field(64, ge=8)
    train_size: int = Field(4000, ge=1)
    eval_size: int = Field(1000, ge=1)
    seed: int = 0
    position_jitter: float = Field(POSITION_JITTER, ge=0, le=MAX_POSITION_JITTER, description=(
        "+- shift of each shape's centre, as a fraction of the image size (wider: layout varies per image)"))
    size_jitter: float = Field(SIZE_JITTER, ge=0, le=MAX_SIZE_JITTER, description=(
        "each shape's radius is scaled by a factor in [1 - size_jitter, 1 + size_jitter]"))


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
                    seed: int, position_jitter: float, size_jitter: float) -> SyntheticShapes:
    size, seed = (train_size, seed) if split == "train" else (eval_size, seed + EVAL_SEED_OFFSET)
    return SyntheticShapes(num_classes, resolution, size, seed, position_jitter, size_jitter)


class WebDatasetConfig(ComponentConfig):
    name: Literal["webdataset"] = "webdataset"
    urls: str = Field(description="training tar shards ({jpg|png, cls} per sample): a directory of *.tar, as "
                      "`stratagen data pack` writes, or a brace pattern, e.g. s3://b/train/shard-{000000..000127}.tar")
    eval_urls: str | None = Field(None, description="held-out shards in the same layout (default: urls)")
    num_classes: int = Field(1000, ge=1)
    resolution: int = Field(256, ge=8)
    augment: bool = Field(True, description="training images: resize the shorter side, random crop, random flip, "
                          "drawn anew each epoch (evaluation: centre crop)")
    shuffle_buffer: int = Field(1000, ge=1, description="samples each loader worker shuffles among")
    seed: int = 0


def _open(key: str, url: str, num_classes: int, open_: Callable[[], T]) -> T:
    """``open_()`` with its failures as one-line errors naming the config key; checks the class count."""
    try:
        dataset = open_()
    except ImportError as exc:  # fsspec names the package a protocol needs, e.g. s3fs for s3://
        raise StratagenError(f"{key}: {url}: {exc}") from None
    except (FileNotFoundError, ValueError) as exc:
        raise StratagenError(f"{key}: {exc}") from None
    found = dataset.class_names
    if found is not None and len(found) != num_classes:
        raise StratagenError(f"{key}: {url} has {len(found)} classes but data.num_classes is {num_classes}")
    return dataset


def build_image_folder(*, split: str, root: str, eval_root: str | None, num_classes: int, resolution: int,
                       augment: bool, seed: int) -> ImageFolder:
    key, url = ("data.root", root) if split == "train" or eval_root is None else ("data.eval_root", eval_root)
    return _open(key, url, num_classes, lambda: ImageFolder(url, resolution, augment and split == "train", seed))


def build_webdataset(*, split: str, urls: str, eval_urls: str | None, num_classes: int, resolution: int,
                     augment: bool, shuffle_buffer: int, seed: int) -> TarShards:
    key, url = ("data.urls", urls) if split == "train" or eval_urls is None else ("data.eval_urls", eval_urls)
    return _open(key, url, num_classes,
                 lambda: TarShards(url, resolution, augment and split == "train", seed, shuffle_buffer))


@hookimpl
def stratagen_register_datasets(register):
    register("synthetic", build_synthetic, SyntheticConfig)
    register("imagefolder", build_image_folder, ImageFolderConfig)
    register("webdataset", build_webdataset, WebDatasetConfig)
