"""MaskGIT (Chang et al. 2022) as plugins: the ``maskgit`` prior and the ``maskgit`` sampler."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from stratagen.registry import ComponentConfig, SamplerConfig, StageSettings, hookimpl

from .prior import MaskedTokenTransformer
from .sampler import MaskGITSampler


class TransformerConfig(ComponentConfig):
    """Size and regularisation of a masked-token transformer (defaults: MaskGIT, 24 x 768, 16 heads)."""

    depth: int = Field(24, ge=1)
    width: int = Field(768, ge=8)
    heads: int = Field(16, ge=1)
    mlp_dim: int = Field(3072, ge=8)
    dropout: float = Field(0.1, ge=0, lt=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    class_dropout: float = Field(0.0, ge=0, le=1, description="share of training rows given the null class "
                                 "('uncond cutoff', StraIT Table 12: 0.1): trains the prior for classifier-free "
                                 "guidance; a config that sets it says why")


TINY_TRANSFORMER = {"depth": 1, "width": 32, "heads": 2, "mlp_dim": 64, "dropout": 0.0}


class MaskGITPriorConfig(TransformerConfig):
    name: Literal["maskgit"] = "maskgit"


class MaskGITSamplerConfig(SamplerConfig):
    name: Literal["maskgit"] = "maskgit"
    stream: str | None = Field(None, description="stream to decode; default: the only unconditioned prior's")
    stage: StageSettings = StageSettings()


@hookimpl
def stratagen_register_priors(register):
    register("maskgit", MaskedTokenTransformer, MaskGITPriorConfig, tiny=TINY_TRANSFORMER)


@hookimpl
def stratagen_register_samplers(register):
    register("maskgit", MaskGITSampler, MaskGITSamplerConfig)


__all__ = ["TINY_TRANSFORMER", "MaskGITSampler", "MaskedTokenTransformer", "TransformerConfig"]
