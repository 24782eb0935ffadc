"""Shared neural-network building blocks."""

from stratagen.nn.attention import Attention, KVCache, get_attention_backend, set_attention_backend
from stratagen.nn.conv import Blur, BlurDownsample, BlurUpsample, NearestUpsample, ResBlock, ResStage, group_norm
from stratagen.nn.discriminator import (
    DiscriminatorBlock,
    StyleGANDiscriminator,
    stylegan_filters,
    discriminator_loss,
    generator_adversarial_loss,
    r1_penalty,
)
from stratagen.nn.ldm import LDMDecoder, LDMEncoder, SpatialSelfAttention
from stratagen.nn.perceptual import PerceptualLoss, lpips_vgg_heads
from stratagen.nn.rope import NormalizedRope2D, grid_positions
from stratagen.nn.quantize import QuantizerOutput, VectorQuantizer, codebook_stats, entropy_loss
from stratagen.nn.transformer import AdaLNBlock, PostNormBlock, TransformerBlock

__all__ = [
    "AdaLNBlock",
    "Attention",
    "Blur",
    "BlurDownsample",
    "BlurUpsample",
    "DiscriminatorBlock",
    "KVCache",
    "LDMDecoder",
    "LDMEncoder",
    "NearestUpsample",
    "NormalizedRope2D",
    "PerceptualLoss",
    "PostNormBlock",
    "QuantizerOutput",
    "ResBlock",
    "ResStage",
    "SpatialSelfAttention",
    "StyleGANDiscriminator",
    "TransformerBlock",
    "VectorQuantizer",
    "codebook_stats",
    "discriminator_loss",
    "entropy_loss",
    "generator_adversarial_loss",
    "get_attention_backend",
    "grid_positions",
    "group_norm",
    "lpips_vgg_heads",
    "r1_penalty",
    "set_attention_backend",
    "stylegan_filters",
]
