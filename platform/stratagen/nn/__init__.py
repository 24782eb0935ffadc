"""Shared neural-network building blocks."""

from stratagen.nn.attention import Attention, get_attention_backend, set_attention_backend
from stratagen.nn.conv import Blur, BlurDownsample, BlurUpsample, ResBlock, ResStage, group_norm
from stratagen.nn.discriminator import (
    DiscriminatorBlock,
    StyleGANDiscriminator,
    stylegan_filters,
    discriminator_loss,
    generator_adversarial_loss,
    r1_penalty,
)
from stratagen.nn.perceptual import PerceptualLoss, lpips_vgg_heads
from stratagen.nn.quantize import QuantizerOutput, VectorQuantizer, codebook_stats, entropy_loss
from stratagen.nn.transformer import PostNormBlock, TransformerBlock

__all__ = [
    "Attention",
    "Blur",
    "BlurDownsample",
    "BlurUpsample",
    "DiscriminatorBlock",
    "PerceptualLoss",
    "PostNormBlock",
    "QuantizerOutput",
    "ResBlock",
    "ResStage",
    "StyleGANDiscriminator",
    "TransformerBlock",
    "VectorQuantizer",
    "codebook_stats",
    "discriminator_loss",
    "entropy_loss",
    "generator_adversarial_loss",
    "get_attention_backend",
    "group_norm",
    "lpips_vgg_heads",
    "r1_penalty",
    "set_attention_backend",
    "stylegan_filters",
]
