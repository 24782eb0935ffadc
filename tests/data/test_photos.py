"""The photos dataset: scikit-image's photographs, disjoint train and eval regions, seeded crops."""
import pytest
import torch

from stratagen.data.photos import DEFAULT_PHOTOGRAPHS, Photographs, load_photograph, split_regions
from stratagen.registry import StratagenError, get_registry

PHOTOS = ["astronaut", "coffee", "brick"]


def test_crops_are_seeded_labelled_and_taken_from_the_photographs():
    data = Photographs(PHOTOS, 16, 30, "train", short_side=64, seed=3)
    again = Photographs(PHOTOS, 16, 30, "train", short_side=64, seed=3)
    other = Photographs(PHOTOS, 16, 30, "train", short_side=64, seed=4)
    assert data.images.shape == (30, 3, 16, 16) and data.images.dtype == torch.uint8
    assert data.class_names == PHOTOS and data.num_classes == 3 and data.labels.tolist() == [0, 1, 2] * 10
    assert torch.equal(data.images, again.images) and not torch.equal(data.images, other.images)
    for index in (0, 4, 29):
        picture = load_photograph(PHOTOS[int(data.labels[index])], 64)
        box = data.crop_box(index)
        assert torch.equal(data.images[index], picture[:, box.top: box.top + 16, box.left: box.left + 16])
    image, label = data[1]
    assert label == 1 and image.min() >= -1 and image.max() <= 1
    grey = data.images[data.labels == 2].float()  # brick is a grey photograph: three equal channels
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])


def test_no_eval_crop_overlaps_a_train_region():
    train = Photographs(DEFAULT_PHOTOGRAPHS, 32, 200, "train", short_side=128)
    held_out = Photographs(DEFAULT_PHOTOGRAPHS, 32, 200, "eval", short_side=128)
    assert held_out.class_names == list(DEFAULT_PHOTOGRAPHS)
    for index in range(len(held_out)):
        label = int(held_out.labels[index])
        box = held_out.crop_box(index)
        assert not box.overlaps(train.regions[label])
        region = held_out.regions[label]
        assert region.top <= box.top and box.top + 32 <= region.top + region.height
        assert region.left <= box.left and box.left + 32 <= region.left + region.width
    for index in range(len(train)):
        assert not train.crop_box(index).overlaps(held_out.regions[int(train.labels[index])])


def test_regions_split_the_longer_side():
    train, held_out = split_regions(100, 200, 0.3)
    assert (train.width, held_out.left, held_out.width, train.height) == (140, 140, 60, 100)
    train, held_out = split_regions(300, 100, 0.25)
    assert (train.height, held_out.top, held_out.height) == (225, 225, 75)
    assert not train.overlaps(held_out)


def test_plugin_builds_both_splits_and_reports_bad_settings():
    registry = get_registry()
    config = registry.get("dataset", "photos").config(photos=PHOTOS, num_classes=3, resolution=16, short_side=64,
                                                      train_size=6, eval_size=3)
    train = registry.build("dataset", config, split="train")
    held_out = registry.build("dataset", config, split="eval")
    assert len(train) == 6 and len(held_out) == 3 and held_out.class_names == PHOTOS
    with pytest.raises(StratagenError, match="eval region is 48x14 px, smaller than the 16-px crops"):
        registry.build("dataset", config.model_copy(update={"short_side": 48}), split="eval")
    with pytest.raises(ValueError, match="num_classes is 10 but photos lists 3"):
        registry.get("dataset", "photos").config(photos=PHOTOS)
