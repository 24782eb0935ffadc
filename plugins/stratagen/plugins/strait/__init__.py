"""StraIT (Qian et al. 2023) as plugins.

- ``vqgan2-r`` / ``vqgan2-c``: the stratified tokenizer with residual or concat fusion (§3.1);
- ``cmtm-top``: the top-level prior (Eq. 3) — the MaskGIT transformer on the top level;
- ``cmtm-bottom``: the bottom-level prior cross-attending to the top tokens and the class (Eq. 4);
  with other conditions it is also the cascade's f8 prior and the 512 upsampler;
- ``upsampler``: the 256 -> 512 token-level upsampler prior (§4.2, Table 4), the bottom prior's
  architecture with 3 layers by default;
- ``stratified``: top then bottom decoding (§3.3); ``cascade``: the MaskGIT cascade baseline (§4.3);
  ``upsample``: StraIT at 256 px, then the upsampler's 512 px tokens, decoded at 512.
"""
from __future__ import annotations

from functools import partial
from typing import Literal

from pydantic import Field, model_validator

from stratagen.plugins.maskgit import TINY_TRANSFORMER, MaskedTokenTransformer, TransformerConfig
from stratagen.plugins.vqgan import TINY_CONV_VQ, ConvVQConfig, build_loss
from stratagen.registry import IncompatibleComponentsError, SamplerConfig, StageSettings, hookimpl

from .samplers import CascadeSampler, StratifiedSampler, UpsampleSampler
from .tokenizer import VQGAN2Tokenizer


class VQGAN2Config(ConvVQConfig):
    """VQGAN2-R / VQGAN2-C (Table 11); the top factor is 2^(len(channel_mult) - 1), the bottom half of it."""

    name: Literal["vqgan2-r", "vqgan2-c"]
    bottom_codebook_size: int | None = Field(None, ge=2, description="separate bottom codebook (Table 8: 2048)")
    latent_blocks: int = Field(2, ge=1, description="residual blocks of the latent conditional layer")
    zero_init_fusion: bool = Field(False, description="not the paper's (vqgan2-r only): the residual fusion starts "
                                   "at zero, so the decoder first decodes the top level alone")
    bottom_dropout: float = Field(0.0, ge=0, lt=1, description="not the paper's (vqgan2-r only): probability of "
                                  "dropping an image's bottom residual in a training step")
    top_only_weight: float = Field(0.0, ge=0, description="not the paper's (vqgan2-r only): weight of a "
                                   "top-level-alone reconstruction term (MSE) in the tokenizer loss")

    @model_validator(mode="after")
    def _residual_only_options(self) -> "VQGAN2Config":
        used = [k for k in ("zero_init_fusion", "bottom_dropout", "top_only_weight") if getattr(self, k)]
        if self.name == "vqgan2-c" and used:
            raise ValueError(f"{', '.join(used)}: only vqgan2-r takes these (with concat fusion the top level does "
                             "not decode alone)")
        return self


class CMTMTopConfig(TransformerConfig):
    """§4.1: 48 layers, width 768, FFN 5120, 32 heads (499M)."""

    name: Literal["cmtm-top"] = "cmtm-top"
    depth: int = Field(48, ge=1)
    heads: int = Field(32, ge=1)
    mlp_dim: int = Field(5120, ge=8)


class CMTMBottomConfig(TransformerConfig):
    """§4.1: 16 layers, width 768, FFN 4096, 24 heads, cross-attention to the conditions."""

    name: Literal["cmtm-bottom"] = "cmtm-bottom"
    depth: int = Field(16, ge=1)
    heads: int = Field(24, ge=1)
    mlp_dim: int = Field(4096, ge=8)


class UpsamplerConfig(CMTMBottomConfig):
    """§4.2: the bottom prior's architecture, 3 layers by default."""

    name: Literal["upsampler"] = "upsampler"
    depth: int = Field(3, ge=1)


class UpsampleConfig(SamplerConfig):
    name: Literal["upsample"] = "upsample"
    top: StageSettings = StageSettings(steps=18)
    bottom: StageSettings = StageSettings(steps=6)
    up_top: StageSettings = StageSettings(steps=12)
    up_bottom: StageSettings = StageSettings(steps=12)
    low: str = Field("vq", description="tokenizer id of the low-resolution streams")
    high: str = Field("vq512", description="tokenizer id of the high-resolution streams")


class StratifiedConfig(SamplerConfig):
    name: Literal["stratified"] = "stratified"
    top: StageSettings = StageSettings(steps=18)
    bottom: StageSettings = StageSettings(steps=6)
    tokenizer: str | None = Field(None, description="the two-level tokenizer; default: the only one")


class CascadeConfig(SamplerConfig):
    name: Literal["cascade"] = "cascade"
    top: StageSettings = StageSettings(steps=18)
    bottom: StageSettings = StageSettings(steps=6)


TINY_VQGAN2 = TINY_CONV_VQ | {"latent_blocks": 1}


def build_vqgan2(*, fusion: str, resolution: int, loss, **fields) -> VQGAN2Tokenizer:
    return VQGAN2Tokenizer(fusion=fusion, resolution=resolution, loss=build_loss(resolution, loss), **fields)


def build_bottom_prior(*, conditions, **fields) -> MaskedTokenTransformer:
    if not conditions:
        raise IncompatibleComponentsError("cmtm-bottom and upsampler priors need at least one condition stream "
                                          "(priors.<id>.conditions)")
    return MaskedTokenTransformer(conditions=conditions, **fields)


@hookimpl
def stratagen_register_tokenizers(register):
    register("vqgan2-r", partial(build_vqgan2, fusion="residual"), VQGAN2Config, tiny=TINY_VQGAN2)
    register("vqgan2-c", partial(build_vqgan2, fusion="concat"), VQGAN2Config, tiny=TINY_VQGAN2)


@hookimpl
def stratagen_register_priors(register):
    register("cmtm-top", MaskedTokenTransformer, CMTMTopConfig, tiny=TINY_TRANSFORMER)
    register("cmtm-bottom", build_bottom_prior, CMTMBottomConfig, tiny=TINY_TRANSFORMER)
    register("upsampler", build_bottom_prior, UpsamplerConfig, tiny=TINY_TRANSFORMER)


@hookimpl
def stratagen_register_samplers(register):
    register("stratified", StratifiedSampler, StratifiedConfig)
    register("cascade", CascadeSampler, CascadeConfig)
    register("upsample", UpsampleSampler, UpsampleConfig)


__all__ = ["CascadeSampler", "StratifiedSampler", "UpsampleSampler", "VQGAN2Tokenizer", "build_vqgan2"]
