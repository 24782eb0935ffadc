"""The ``photos`` dataset: crops of the photographs shipped with scikit-image, one class per photograph.

Train and eval crops come from disjoint regions of every photograph (see
:mod:`stratagen.data.photos`). A dataset factory receives its config fields plus ``split``.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from stratagen.data.photos import DEFAULT_PHOTOGRAPHS, PHOTOGRAPHS, Photographs
from stratagen.registry import ComponentConfig, StratagenError, hookimpl


class PhotosConfig(ComponentConfig):
    name: Literal["photos"] = "photos"
    photos: list[Literal[tuple(PHOTOGRAPHS)]] = Field(list(DEFAULT_PHOTOGRAPHS), min_length=1,
                                                      description="one class per photograph, in this order")
    num_classes: int = Field(len(DEFAULT_PHOTOGRAPHS), ge=1, description="must equal len(photos)")
    resolution: int = Field(32, ge=8, description="crop side in pixels")
    short_side: int | None = Field(128, ge=8, description="resize each photograph to this shorter side first "
                                                          "(null: as shipped)")
    eval_fraction: float = Field(0.3, gt=0, lt=1, description="share of each photograph's longer side kept "
                                                              "for evaluation")
    train_size: int = Field(5000, ge=1)
    eval_size: int = Field(1000, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _classes_match(self) -> PhotosConfig:
        if len(set(self.photos)) != len(self.photos):
            raise ValueError("photos: each photograph may appear once")
        if self.num_classes != len(self.photos):
            raise ValueError(f"num_classes is {self.num_classes} but photos lists {len(self.photos)} photographs")
        return self


def build_photos(*, split: str, photos: list[str], num_classes: int, resolution: int, short_side: int | None,
                 eval_fraction: float, train_size: int, eval_size: int, seed: int) -> Photographs:
    try:
        return Photographs(photos, resolution, train_size if split == "train" else eval_size, split,
                           short_side, eval_fraction, seed)
    except (FileNotFoundError, ValueError) as exc:
        raise StratagenError(f"data: {exc}") from None


@hookimpl
def stratagen_register_datasets(register):
    register("photos", build_photos, PhotosConfig)
