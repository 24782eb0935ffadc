"""VAR (Tian et al. 2024) and STAR (Ma et al. 2024) as plugins: next-scale prediction.

- ``msvq``: the multi-scale residual VQ tokenizer (VAR Alg. 1 and 2), every scale a level;
- ``var``: the next-scale prior, block-causal over the concatenated scales, class AdaLN,
  teacher forcing from the tokenizer's cumulative features; STAR's options: ``position: rope``
  (normalized 2D RoPE) and ``captions`` (text conditioning by ``text_encoder``: a small one
  trained with the prior, or a local pretrained CLIP text tower);
- ``next-scale``: the sampler, one forward per scale with a KV cache, top-k / top-p and
  classifier-free guidance.
"""
from __future__ import annotations

from functools import partial
from typing import Annotated, Any, Literal, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stratagen.plugins.vqgan import TINY_CONV_VQ, ConvVQConfig, Decoder, Encoder, build_loss
from stratagen.registry import ComponentConfig, ConfigError, SamplerConfig, StageSettings, hookimpl

from .clip import ClipTextEncoder
from .prior import NextScaleTransformer
from .sampler import NextScaleSampler
from .text import CaptionEncoder, TextEncoder
from .tokenizer import MultiScaleVQTokenizer


class MultiScaleVQConfig(ConvVQConfig):
    """VAR's tokenizer (defaults: VAR's VQVAE at 256 px: f16, 4096 codes of 32 channels, width 160)."""

    name: Literal["msvq"] = "msvq"
    channels: int = Field(160, ge=1)
    codebook_size: int = Field(4096, ge=2)
    scales: tuple[int, ...] = Field((1, 2, 3, 4, 5, 6, 8, 10, 13, 16), min_length=1,
                                    description="token-grid sides, coarse to fine; the last is resolution / f")
    phi_ratio: float = Field(0.5, ge=0, le=1, description="residual ratio of each scale's conv phi_k (VAR: 0.5)")
    shared_phis: int = Field(0, ge=0, description="0: one phi conv per scale; n: VAR's partially shared phi, n convs "
                                                  "shared by the scales by position (VAR: 4)")


class SmallTextEncoderConfig(BaseModel):
    """The small text encoder trained with the prior on the words of its captions (the demo's)."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["small"] = "small"
    depth: int = Field(2, ge=1, description="layers (width and heads: the prior's)")
    weights: str | None = Field(None, description="local safetensors state dict of this encoder to start from; "
                                                  "a missing file stops the run")


class ClipTextEncoderConfig(BaseModel):
    """A local pretrained CLIP text tower (Hugging Face CLIPTextModel layout) and its BPE tokenizer."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["clip"] = "clip"
    weights: str = Field(description="safetensors file of the text tower (keys text_model.*; a full CLIPModel "
                                     "file works too)")
    tokenizer: str | None = Field(None, description="folder of vocab.json and merges.txt; default: the weights' folder")
    heads: int | None = Field(None, ge=1, description="attention heads; default: num_attention_heads of the "
                                                      "config.json beside the weights")
    activation: Literal["quick_gelu", "gelu"] | None = Field(
        None, description="the MLP's; default: hidden_act of that config.json, else quick_gelu (OpenAI)")
    fine_tune: bool = Field(False, description="train the tower with the prior (default: frozen, and left out "
                                               "of checkpoints); its projection to the prior's width always trains")


TextEncoderConfig = Annotated[Union[SmallTextEncoderConfig, ClipTextEncoderConfig], Field(discriminator="name")]


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
    qk_norm: bool = Field(False, description="VAR's official attention (attn_l2_norm): q and k L2-normalised, "
                                             "times a learned per-head scale (at most 100), no 1/sqrt(d)")
    key_bias: bool = Field(True, description="a bias on the keys; VAR's official layout has none (q and v biases only)")
    dropout: float = Field(0.0, ge=0, lt=1)
    class_dropout: float = Field(0.1, ge=0, le=1, description="null-class share in training (guidance)")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    captions: tuple[str, ...] | None = Field(
        None, description="STAR: one caption per class; the prior then reads them with its text_encoder "
                          "(pooled feature for the start token and AdaLN, cross-attention in every block)")
    text_encoder: TextEncoderConfig | None = Field(
        None, description="reads the captions: small (trained with the prior; the default with captions) or "
                          "clip (a local pretrained CLIP text tower)")

    @model_validator(mode="before")
    @classmethod
    def _small_text_encoder_by_default(cls, data: Any) -> Any:
        """Captions without a text_encoder (or ``text_encoder: null``) get the small one (the
        config is frozen once validated, so the default is filled in before)."""
        if isinstance(data, dict) and data.get("captions") is not None and data.get("text_encoder") is None:
            data = {**data, "text_encoder": {"name": "small"}}
        return data

    @model_validator(mode="after")
    def _text_needs_captions(self) -> "NextScaleConfig":
        if self.captions is None and self.text_encoder is not None:
            raise ValueError("text_encoder reads captions: give model.captions (one per class), or leave "
                             "text_encoder out for a class-conditioned prior")
        return self


class NextScaleSamplerConfig(SamplerConfig):
    name: Literal["next-scale"] = "next-scale"
    scales: StageSettings = Field(StageSettings(steps=1), description="settings of every scale (steps: 1)")
    tokenizer: str | None = Field(None, description="the multi-scale tokenizer; default: the next-scale prior's")
    use_cache: bool = Field(True, description="KV cache: each scale is one forward over its own tokens")
    more_smooth: bool = Field(False, description="VAR's visual option: each scale adds a Gumbel-softmax blend of "
                                                 "codes instead of the drawn tokens' codes (off for FID, as in VAR)")

    @field_validator("scales")
    @classmethod
    def _one_step(cls, value: StageSettings) -> StageSettings:
        if value.steps != 1:
            raise ValueError(f"next-scale prediction samples each scale in one step, not {value.steps}")
        return value


TINY_MSVQ = TINY_CONV_VQ | {"scales": [1, 2, 4]}
TINY_VAR = {"depth": 1, "width": 32, "heads": 2, "feature_dim": TINY_CONV_VQ["embedding_dim"]}


def build_text_encoder(config: SmallTextEncoderConfig | ClipTextEncoderConfig, captions: Sequence[str],
                       width: int, heads: int) -> CaptionEncoder:
    """The text encoder of a validated ``text_encoder`` section, for a prior of ``width`` and ``heads``."""
    if isinstance(config, ClipTextEncoderConfig):
        return ClipTextEncoder(width=width, weights=config.weights, tokenizer=config.tokenizer, heads=config.heads,
                               activation=config.activation, fine_tune=config.fine_tune)
    return TextEncoder(captions, width, config.depth, heads, config.weights)


def build_var(*, captions: Sequence[str] | None, text_encoder: SmallTextEncoderConfig | ClipTextEncoderConfig | None,
              width: int, heads: int, **fields) -> NextScaleTransformer:
    """Registry factory: the validated ``NextScaleConfig`` fields, the text encoder built from its section."""
    text = None if captions is None else build_text_encoder(text_encoder, captions, width, heads)
    return NextScaleTransformer(captions=captions, text=text, width=width, heads=heads, **fields)


def build_msvq(*, resolution: int, loss, channels: int, channel_mult: Sequence[int], num_res_blocks: int,
               embedding_dim: int, **fields) -> MultiScaleVQTokenizer:
    """Registry factory: the multi-scale quantizer around stratagen's VQGAN encoder and decoder."""
    try:
        return MultiScaleVQTokenizer(
            encoder=partial(Encoder, channels, channel_mult, num_res_blocks, embedding_dim),
            decoder=partial(Decoder, channels, channel_mult, num_res_blocks, embedding_dim),
            factor=2 ** (len(channel_mult) - 1),
            resolution=resolution, loss=build_loss(resolution, loss), embedding_dim=embedding_dim, **fields)
    except ValueError as exc:
        raise ConfigError(f"msvq: {exc}") from None


@hookimpl
def stratagen_register_tokenizers(register):
    register("msvq", build_msvq, MultiScaleVQConfig, tiny=TINY_MSVQ)


@hookimpl
def stratagen_register_priors(register):
    register("var", build_var, NextScaleConfig, tiny=TINY_VAR)


@hookimpl
def stratagen_register_samplers(register):
    register("next-scale", NextScaleSampler, NextScaleSamplerConfig)


__all__ = ["ClipTextEncoder", "MultiScaleVQTokenizer", "NextScaleSampler", "NextScaleTransformer", "TextEncoder",
           "build_var"]
