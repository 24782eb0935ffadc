"""The ``webdataset`` dataset: images and labels in tar shards ({jpg|png, cls} per sample), read
from a local directory or any fsspec URL (``s3://`` with ``s3fs``, ``gs://`` with ``gcsfs``).

Write shards from an image folder with ``stratagen data pack FOLDER OUT --shard-size N``.
A dataset factory receives its config fields plus ``split`` ("train" or "eval").
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from stratagen.data.shards import TarShards
from stratagen.registry import ComponentConfig, StratagenError, hookimpl


class WebDatasetConfig(ComponentConfig):
    name: Literal["webdataset"] = "webdataset"
    urls: str = Field(description="training shards: a directory of *.tar (as `stratagen data pack` writes) or a "
                      "brace pattern, e.g. s3://bucket/imagenet/train/shard-{000000..000127}.tar")
    eval_urls: str | None = Field(None, description="held-out shards in the same layout (default: urls)")
    num_classes: int = Field(1000, ge=1)
    resolution: int = Field(256, ge=8)
    augment: bool = Field(True, description="training images: resize the shorter side, random crop, random flip, "
                          "drawn anew each epoch (evaluation: centre crop)")
    shuffle_buffer: int = Field(1000, ge=1, description="samples each loader worker shuffles among")
    seed: int = 0


def build_webdataset(*, split: str, urls: str, eval_urls: str | None, num_classes: int, resolution: int,
                     augment: bool, shuffle_buffer: int, seed: int) -> TarShards:
    key, url = ("data.urls", urls) if split == "train" or eval_urls is None else ("data.eval_urls", eval_urls)
    try:
        shards = TarShards(url, resolution, augment=augment and split == "train", seed=seed,
                           shuffle_buffer=shuffle_buffer)
    except ImportError as exc:  # fsspec names the package a protocol needs, e.g. s3fs for s3://
        raise StratagenError(f"{key}: {url}: {exc}") from None
    except (FileNotFoundError, ValueError) as exc:
        raise StratagenError(f"{key}: {exc}") from None
    if shards.class_names is not None and len(shards.class_names) != num_classes:
        raise StratagenError(f"{key}: {url} holds {len(shards.class_names)} classes but data.num_classes is "
                             f"{num_classes}")
    return shards


@hookimpl
def stratagen_register_datasets(register):
    register("webdataset", build_webdataset, WebDatasetConfig)
