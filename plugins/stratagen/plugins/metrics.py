"""Built-in sample-quality metrics.

* ``inception``: FID / IS / KID on torch-fidelity's Inception-v3 (precision/recall on VGG16),
  comparable to published numbers; needs local weights files and fails at once without them.
* ``in-domain``: the same scores in the feature space of a small classifier trained on the
  reference images, plus ``class_accuracy``; works offline at any scale but is NOT comparable
  to published Inception FIDs.

A metric factory receives its config fields as keyword arguments.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from stratagen.eval import InceptionMetric, InDomainMetric
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


@hookimpl
def stratagen_register_metrics(register):
    register("inception", InceptionMetric, InceptionConfig)
    register("in-domain", InDomainMetric, InDomainConfig, tiny={"classifier_steps": 20, "batch_size": 16, "kid_subset_size": 4})
