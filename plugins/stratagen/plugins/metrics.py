"""Built-in sample-quality metrics.

* ``inception``: FID / IS / KID on torch-fidelity's Inception-v3 (precision/recall on VGG16),
  comparable to published numbers; needs local weights files and fails at once without them.
* ``in-domain``: FID / IS / KID / precision / recall in the feature space of a small classifier
  trained on the reference images (several layers, so that blur and noise count), plus
  ``class_accuracy``; works offline at any scale but is NOT comparable to published Inception FIDs.
* ``swd``: multi-scale sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al.
  2018), class-conditional; no network at all.

A metric factory receives its config fields as keyword arguments.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from stratagen.eval import InceptionMetric, InDomainMetric, SlicedWassersteinMetric
from stratagen.eval.fidelity import INCEPTION_FILE, VGG16_FILE
from stratagen.registry import ComponentConfig, hookimpl


class InceptionConfig(ComponentConfig):
    name: Literal["inception"] = "inception"
    weights: str | None = Field(None, description=f"local torch-fidelity Inception-v3 weights ({INCEPTION_FILE})")
    vgg_weights: str | None = Field(None, description=f"local torchvision VGG16 weights ({VGG16_FILE}), for prc")
    metrics: list[Literal["fid", "isc", "kid", "prc"]] = Field(["fid", "isc"], min_length=1)
    kid_subset_size: int = Field(1000, ge=2)
    batch_size: int = Field(64, ge=1)
    device: str = "cpu"


class InDomainConfig(ComponentConfig):
    name: Literal["in-domain"] = "in-domain"
    classifier_steps: int = Field(300, ge=1, description="training steps of the in-domain classifier")
    batch_size: int = Field(64, ge=1)
    kid_subset_size: int = Field(100, ge=2)
    device: str = "cpu"


class SlicedWassersteinConfig(ComponentConfig):
    name: Literal["swd"] = "swd"
    patches_per_image: int = Field(64, ge=1, description="7x7 descriptors per generated image and pyramid level")
    directions: int = Field(128, ge=1, description="random projections per repeat")
    repeats: int = Field(4, ge=1)
    min_resolution: int = Field(8, ge=8, description="coarsest pyramid level in pixels")
    seed: int = 0


@hookimpl
def stratagen_register_metrics(register):
    register("inception", InceptionMetric, InceptionConfig)
    register("in-domain", InDomainMetric, InDomainConfig,
             tiny={"classifier_steps": 20, "batch_size": 16, "kid_subset_size": 4})
    register("swd", SlicedWassersteinMetric, SlicedWassersteinConfig)
