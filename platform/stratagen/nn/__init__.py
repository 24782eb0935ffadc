"""Shared neural-network building blocks."""

from stratagen.nn.attention import Attention, get_attention_backend, set_attention_backend
from stratagen.nn.conv import Blur, BlurDownsample, BlurUpsample, ResBlock, ResStage, group_norm
from stratagen.nn.discriminator import (
    DiscriminatorBlock,
    StyleGANDiscriminator,
    discriminator_loss,
    generator_adversarial_loss,
    r1_penalty,
)
from stratagen.nn.perceptual import PerceptualLoss
from stratagen.nn.quantize import QuantizerOutput, VectorQuantizer, codebook_stats
from stratagen.nn.transformer import TransformerBlock

__all__ = [
    "Attention",
    "Blur",
    "BlurDownsample",
    "BlurUpsample",
    "DiscriminatorBlock",
    "PerceptualLoss",
    "QuantizerOutput",
    "ResBlock",
    "ResStage",
    "StyleGANDiscriminator",
    "TransformerBlock",
    "VectorQuantizer",
    "codebook_stats",
    "discriminator_loss",
    "generator_adversarial_loss",
    "get_attention_backend",
    "group_norm",
    "r1_penalty",
    "set_attention_backend",
]
