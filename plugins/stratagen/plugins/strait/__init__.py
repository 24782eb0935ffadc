"""StraIT (Qian et al. 2023) as plugins.

- ``vqgan2-r`` / ``vqgan2-c``: the stratified tokenizer with residual or concat fusion (§3.1);
  ``vqgan2-c`` with ``fusion: concat-stem`` is an earlier fusion that is not the paper's;
- ``cmtm-top``: the top-level prior (Eq. 3) — the MaskGIT transformer on the top level;
- ``cmtm-bottom``: the bottom-level prior cross-attending to the top tokens and the class (Eq. 4);
  with other conditions it is also the cascade's f8 prior and the 512 upsampler;
- ``upsampler``: the 256 -> 512 token-level upsampler prior (§4.2, Table 4), the bottom prior's
  architecture with 3 layers by default; the paper's one model generates both 512 levels as one
  joint stream (``vq512.top+bottom``);
- ``stratified``: top then bottom decoding (§3.3); ``cascade``: the MaskGIT cascade baseline (§4.3);
  ``upsample``: StraIT at 256 px, then the upsampler's 512 px tokens, decoded at 512.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from stratagen.plugins.maskgit import TINY_TRANSFORMER, MaskedTokenTransformer, TransformerConfig
from stratagen.plugins.vqgan import TINY_CONV_VQ, ConvVQConfig, build_loss
from stratagen.registry import IncompatibleComponentsError, SamplerConfig, StageSettings, hookimpl

from .samplers import CascadeSampler, StratifiedSampler, UpsampleSampler
from .tokenizer import Fusion, VQGAN2Tokenizer


#: the fusions each VQGAN2 variant accepts, its default first
FUSIONS = {"vqgan2-r": ("residual",), "vqgan2-c": ("concat", "concat-stem")}


class VQGAN2Config(ConvVQConfig):
    """VQGAN2-R / VQGAN2-C (Table 11); the top factor is 2^(len(channel_mult) - 1), the bottom half of it."""

    name: Literal["vqgan2-r", "vqgan2-c"]
    fusion: Fusion | None = Field(
        None, description="vqgan2-r: residual (the default and only one); vqgan2-c: concat (default; the paper's, "
                          "VQ-VAE-2's: top upscaled by a transposed conv and concatenated with bottom at the decoder "
                          "input) or concat-stem (not the paper's: concatenated after the decoder's f stem)")
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

    @model_validator(mode="before")
    @classmethod
    def _fusion_of_the_variant(cls, data: Any) -> Any:
        """The variant's default fusion is filled in (so a saved config names it); another variant's is refused."""
        if not isinstance(data, dict) or data.get("name") not in FUSIONS:
            return data
        allowed = FUSIONS[data["name"]]
        fusion = data.get("fusion") or allowed[0]
        if fusion not in allowed:
            raise ValueError(f"{data['name']} takes fusion {' or '.join(map(repr, allowed))}, not {fusion!r}")
        return {**data, "fusion": fusion}


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
    form: Literal["joint", "two-stage"] = Field(
        "joint", description="joint (the paper's, §4.2 and Table 4): one upsampler prior generates both high-resolution "
                             "levels as one stream (<high>.top+bottom) in `up` steps; two-stage (not the paper's): "
                             "one prior per level, `up_top` then `up_bottom` steps")
    top: StageSettings = StageSettings(steps=18)
    bottom: StageSettings = StageSettings(steps=6)
    up: StageSettings = StageSettings(steps=12)
    up_top: StageSettings = StageSettings(steps=12)
    up_bottom: StageSettings = StageSettings(steps=12)
    low: str = Field("vq", description="tokenizer id of the low-resolution streams")
    high: str = Field("vq512", description="tokenizer id of the high-resolution streams")

    def stage_names(self) -> list[str]:
        """The stages of the configured form (a sweep's per-stage lists name these)."""
        return ["top", "bottom", *(["up"] if self.form == "joint" else ["up_top", "up_bottom"])]


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


def build_vqgan2(*, resolution: int, loss, **fields) -> VQGAN2Tokenizer:
    return VQGAN2Tokenizer(resolution=resolution, loss=build_loss(resolution, loss), **fields)


def build_bottom_prior(*, conditions, **fields) -> MaskedTokenTransformer:
    if not conditions:
        raise IncompatibleComponentsError("cmtm-bottom and upsampler priors need at least one condition stream "
                                          "(priors.<id>.conditions)")
    return MaskedTokenTransformer(conditions=conditions, **fields)


@hookimpl
def stratagen_register_tokenizers(register):
    register("vqgan2-r", build_vqgan2, VQGAN2Config, tiny=TINY_VQGAN2)
    register("vqgan2-c", build_vqgan2, VQGAN2Config, tiny=TINY_VQGAN2)


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
