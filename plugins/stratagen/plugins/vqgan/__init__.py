"""MaskGIT's VQGAN tokenizer (``vqgan``) and the VQGAN losses shared by VQ tokenizers."""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from stratagen.registry import ComponentConfig, hookimpl

from .losses import VQGANLoss
from .networks import Decoder, Encoder
from .tokenizer import VQGANTokenizer, VQTokenizer


class VQGANLossConfig(ComponentConfig):
    """Loss settings of a VQ tokenizer (StraIT Table 11)."""

    perceptual_weights: str | None = Field(
        None, description="local VGG16 ImageNet weights (.safetensors/.pth state dict); none: perceptual loss off")
    perceptual_weight: float = Field(0.1, ge=0)
    gan_weight: float = Field(0.1, ge=0, description="0 disables the discriminator")
    gan_start: int = Field(0, ge=0, description="step at which the adversarial loss starts")
    r1_cost: float = Field(10.0, ge=0, description="R1 weight, official MaskGIT convention: cost * mean ||grad||^2")
    disc_channel_multiplier: int = Field(1, ge=1, description="scales StyleGAN's filter table (Table 11: 1)")
    disc_max_channels: int = Field(512, ge=1, description="caps the discriminator's widths (512: StyleGAN's)")


class ConvVQConfig(ComponentConfig):
    """Encoder/decoder/quantizer settings shared by ``vqgan`` and ``vqgan2-*``."""

    channels: int = Field(128, ge=1)
    channel_mult: tuple[int, ...] = Field((1, 1, 2, 2, 4), min_length=2)
    num_res_blocks: int = Field(2, ge=1)
    codebook_size: int = Field(8192, ge=2)
    embedding_dim: int = Field(32, ge=1)
    commitment_cost: float = Field(0.25, ge=0)
    restart_dead_codes: bool = False
    dead_code_steps: int = Field(100, ge=1, description="with restart_dead_codes: a code unused for this many "
                                 "training steps (on every process) is restarted from an encoder output")
    code_dim: int | None = Field(None, ge=1, description="factorized codes (ViT-VQGAN): look up in a linear "
                                 "projection of the latents to code_dim; none: in embedding_dim")
    l2_normalized_codes: bool = Field(False, description="ViT-VQGAN: l2-normalize latents and codes, nearest by cosine")
    entropy_loss_weight: float = Field(0.0, ge=0, description="MaskGIT's codebook entropy loss (official: 0.1)")
    entropy_temperature: float = Field(0.01, gt=0, description="softmax temperature of the entropy loss")
    loss: VQGANLossConfig = VQGANLossConfig()


#: a convolutional VQ tokenizer small enough to build and run in a second (conformance tests)
TINY_CONV_VQ = {"channels": 8, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "codebook_size": 32,
                "embedding_dim": 8, "loss": {"gan_weight": 0.0, "perceptual_weights": None}}


class VQGANConfig(ConvVQConfig):
    name: Literal["vqgan"] = "vqgan"
    factor: Literal[2, 4, 8, 16, 32] = Field(
        16, description="downsampling factor f; needs log2(f)+1 channel_mult entries")

    @model_validator(mode="after")
    def _factor_matches(self) -> "VQGANConfig":
        if len(self.channel_mult) != int(math.log2(self.factor)) + 1:
            raise ValueError(f"factor {self.factor} needs {int(math.log2(self.factor)) + 1} channel_mult entries, "
                             f"got {len(self.channel_mult)}: {list(self.channel_mult)}")
        return self


def build_loss(resolution: int, loss: VQGANLossConfig) -> VQGANLoss:
    return VQGANLoss(resolution=resolution, **{k: getattr(loss, k) for k in VQGANLossConfig.model_fields})


def build_vqgan(*, resolution: int, factor: int, loss: VQGANLossConfig, **fields) -> VQGANTokenizer:
    """Registry factory: the validated ``VQGANConfig`` fields (``factor`` is implied by ``channel_mult``)."""
    return VQGANTokenizer(resolution=resolution, loss=build_loss(resolution, loss), **fields)


@hookimpl
def stratagen_register_tokenizers(register):
    register("vqgan", build_vqgan, VQGANConfig, tiny=TINY_CONV_VQ | {"factor": 4})


__all__ = ["TINY_CONV_VQ", "ConvVQConfig", "Decoder", "Encoder", "VQGANConfig", "VQGANLoss", "VQGANLossConfig", "VQGANTokenizer",
           "VQTokenizer", "build_loss"]
