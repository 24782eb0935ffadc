"""VAR (Tian et al. 2024) and STAR (Ma et al. 2024) as plugins: next-scale prediction.

- ``msvq``: the multi-scale residual VQ tokenizer (VAR Alg. 1 and 2), every scale a level;
- ``var``: the next-scale prior, block-causal over the concatenated scales, class AdaLN,
  teacher forcing from the tokenizer's cumulative features; STAR's options: ``position: rope``
  (normalized 2D RoPE) and ``captions`` (text conditioning by a text encoder trained with it);
- ``next-scale``: the sampler, one forward per scale with a KV cache, top-k / top-p and
  classifier-free guidance.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from stratagen.plugins.vqgan import TINY_CONV_VQ, ConvVQConfig, build_loss
from stratagen.registry import ComponentConfig, ConfigError, SamplerConfig, StageSettings, hookimpl

from .prior import NextScaleTransformer
from .sampler import NextScaleSampler
from .tokenizer import MultiScaleVQTokenizer


class MultiScaleVQConfig(ConvVQConfig):
    """VAR's tokenizer (defaults: VAR's VQVAE at 256 px: f16, 4096 codes of 32 channels, width 160)."""

    name: Literal["msvq"] = "msvq"
    channels: int = Field(160, ge=1)
    codebook_size: int = Field(4096, ge=2)
    scales: tuple[int, ...] = Field((1, 2, 3, 4, 5, 6, 8, 10, 13, 16), min_length=1,
                                    description="token-grid sides, coarse to fine; the last is resolution / f")
    phi_ratio: float = Field(0.5, ge=0, le=1, description="residual ratio of each scale's conv phi_k (VAR: 0.5)")


class NextScaleConfig(ComponentConfig):
    """VAR-d: depth d, width 64 d, d heads, FFN ratio 4 (defaults: VAR-d16, 310M at 256 px)."""

    name: Literal["var"] = "var"
    depth: int = Field(16, ge=1)
    width: int = Field(1024, ge=8)
    heads: int = Field(16, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    feature_dim: int = Field(32, ge=1, description="channels of the tokenizer's feature map (its embedding_dim)")
    position: Literal["absolute", "rope"] = Field(
        "absolute", description="absolute: VAR's learned positions; rope: STAR's normalized 2D RoPE")
    dropout: float = Field(0.0, ge=0, lt=1)
    class_dropout: float = Field(0.1, ge=0, le=1, description="null-class share in training (guidance)")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    captions: tuple[str, ...] | None = Field(
        None, description="STAR: one caption per class; the prior then reads them with a text encoder trained "
                          "with it (pooled feature for the start token and AdaLN, cross-attention in every block)")
    text_depth: int = Field(2, ge=1, description="layers of the text encoder (with captions)")
    text_weights: str | None = Field(None, description="local safetensors state dict of the text encoder to start "
                                                       "from (with captions); a missing file stops the run")


class NextScaleSamplerConfig(SamplerConfig):
    name: Literal["next-scale"] = "next-scale"
    scales: StageSettings = Field(StageSettings(steps=1), description="settings of every scale (steps: 1)")
    tokenizer: str | None = Field(None, description="the multi-scale tokenizer; default: the next-scale prior's")
    use_cache: bool = Field(True, description="KV cache: each scale is one forward over its own tokens")

    @field_validator("scales")
    @classmethod
    def _one_step(cls, value: StageSettings) -> StageSettings:
        if value.steps != 1:
            raise ValueError(f"next-scale prediction samples each scale in one step, not {value.steps}")
        return value


TINY_MSVQ = TINY_CONV_VQ | {"scales": [1, 2, 4]}
TINY_VAR = {"depth": 1, "width": 32, "heads": 2, "feature_dim": TINY_CONV_VQ["embedding_dim"]}


def build_msvq(*, resolution: int, loss, **fields) -> MultiScaleVQTokenizer:
    try:
        return MultiScaleVQTokenizer(resolution=resolution, loss=build_loss(resolution, loss), **fields)
    except ValueError as exc:
        raise ConfigError(f"msvq: {exc}") from None


@hookimpl
def stratagen_register_tokenizers(register):
    register("msvq", build_msvq, MultiScaleVQConfig, tiny=TINY_MSVQ)


@hookimpl
def stratagen_register_priors(register):
    register("var", NextScaleTransformer, NextScaleConfig, tiny=TINY_VAR)


@hookimpl
def stratagen_register_samplers(register):
    register("next-scale", NextScaleSampler, NextScaleSamplerConfig)


__all__ = ["MultiScaleVQTokenizer", "NextScaleSampler", "NextScaleTransformer"]
