"""The convolutional autoencoder of taming-transformers' VQGAN and latent diffusion (Esser et al.
2021, §3 and its ``Encoder``/``Decoder``; Rombach et al. 2022), which VAR's VQVAE and LlamaGen's
VQ tokenizers reuse with other settings.

Encoder, level by level at decreasing resolution: ``num_res_blocks`` residual blocks (GroupNorm,
SiLU, conv3x3, twice; a 1x1 shortcut where the width changes), each followed by a self-attention
block on the levels in ``attention_levels``, then a stride-2 conv3x3 after a zero pad of one row
and column on the bottom/right (the asymmetric pad keeps every output centred on its 2x2 cell);
a middle of block, attention (``mid_attention``), block; GroupNorm, SiLU, conv3x3 to
``z_channels``; the quant conv to ``embedding_dim``. The decoder mirrors it with
``num_res_blocks + 1`` blocks per level and nearest 2x upsampling plus conv3x3, after the
post-quant conv and a conv3x3 from ``z_channels``.

Level ``i`` (0: full resolution) has width ``channels * channel_mult[i]`` and works at
``1 / 2^i`` of the image size, in the encoder and in the decoder alike. What the families set:

| family            | channel_mult    | attention_levels | z_channels | embedding_dim | quant_kernel |
|-------------------|-----------------|------------------|------------|---------------|--------------|
| taming VQGAN f16  | 1, 1, 2, 2, 4   | 4 (16 px at 256) | 256        | 256           | 1            |
| VAR VQVAE         | 1, 1, 2, 2, 4   | 4                | 32         | 32            | 3            |
| LlamaGen VQ-16    | 1, 1, 2, 2, 4   | 4                | 256        | 8             | 1            |
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stratagen.nn.attention import Attention
from stratagen.nn.conv import NearestUpsample, ResBlock, group_norm


class SpatialSelfAttention(nn.Module):
    """GroupNorm, then single-head self-attention over the ``H * W`` positions (1x1 projections, the
    ``1/sqrt(C)`` scale), added to the input; [B,C,H,W] -> [B,C,H,W]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.attn = Attention(channels, num_heads=1)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.attn(self.norm(x).flatten(2).transpose(1, 2))
        return x + h.transpose(1, 2).reshape(B, C, H, W)


class PaddedDownsample(nn.Module):
    """Zero pad one column right and one row below, then conv3x3 stride 2; [B,C,H,W] -> [B,C,H/2,W/2]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class AutoencoderLevel(nn.Module):
    """One resolution: residual blocks (each followed by attention when ``attention``), then
    ``resample`` (a down- or upsampling module, or none at the last level)."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, attention: bool,
                 resample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(in_channels if i == 0 else out_channels, out_channels)
                                    for i in range(num_blocks))
        self.attn = nn.ModuleList(SpatialSelfAttention(out_channels) for _ in range(num_blocks if attention else 0))
        self.resample = resample or nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x)
            if self.attn:
                x = self.attn[i](x)
        return self.resample(x)


class AutoencoderMiddle(nn.Sequential):
    """Residual block, self-attention (or none), residual block at ``channels``; [B,C,h,w] -> same."""

    def __init__(self, channels: int, attention: bool) -> None:
        super().__init__()
        self.block_1 = ResBlock(channels, channels)
        self.attn_1 = SpatialSelfAttention(channels) if attention else nn.Identity()
        self.block_2 = ResBlock(channels, channels)


def _check_levels(channel_mult: Sequence[int], attention_levels: Sequence[int]) -> None:
    if any(not 0 <= i < len(channel_mult) for i in attention_levels):
        raise ValueError(f"attention_levels {list(attention_levels)} must index the {len(channel_mult)} levels "
                         f"of channel_mult (0 .. {len(channel_mult) - 1})")


class LDMEncoder(nn.Module):
    """Images [B, in_channels, H, W] -> latents [B, embedding_dim, H/f, W/f], f = 2^(len(channel_mult) - 1).

    Args:
        channels, channel_mult, num_res_blocks: level widths ``channels * channel_mult[i]`` and blocks.
        z_channels: output of the network body (taming's ``z_channels``).
        embedding_dim: output of the quant conv (the quantizer's dimension).
        attention_levels: levels whose blocks are followed by self-attention.
        mid_attention: self-attention between the two middle blocks.
        quant_kernel: kernel of the quant conv (1 in taming and LlamaGen, 3 in VAR).
    """

    def __init__(self, *, channels: int, channel_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 embedding_dim: int, attention_levels: Sequence[int], mid_attention: bool = True,
                 quant_kernel: int = 1, in_channels: int = 3) -> None:
        super().__init__()
        _check_levels(channel_mult, attention_levels)
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        widths = [channels * m for m in channel_mult]
        last = len(widths) - 1
        self.down = nn.ModuleList(
            AutoencoderLevel(channels if i == 0 else widths[i - 1], width, num_res_blocks, i in attention_levels,
                             PaddedDownsample(width) if i < last else None)
            for i, width in enumerate(widths))
        self.mid = AutoencoderMiddle(widths[-1], mid_attention)
        self.norm_out = group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], z_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(z_channels, embedding_dim, quant_kernel, padding=quant_kernel // 2)

    def forward(self, images: Tensor) -> Tensor:
        h = self.conv_in(images)
        for level in self.down:
            h = level(h)
        h = self.conv_out(F.silu(self.norm_out(self.mid(h))))
        return self.quant_conv(h)


class LDMDecoder(nn.Module):
    """Latents [B, embedding_dim, h, w] -> images [B, out_channels, h f, w f]; the arguments as
    :class:`LDMEncoder`'s. ``up[0]`` is the coarsest level (it runs first), ``up[-1]`` level 0."""

    def __init__(self, *, channels: int, channel_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 embedding_dim: int, attention_levels: Sequence[int], mid_attention: bool = True,
                 quant_kernel: int = 1, out_channels: int = 3) -> None:
        super().__init__()
        _check_levels(channel_mult, attention_levels)
        widths = [channels * m for m in channel_mult]
        self.post_quant_conv = nn.Conv2d(embedding_dim, z_channels, quant_kernel, padding=quant_kernel // 2)
        self.conv_in = nn.Conv2d(z_channels, widths[-1], 3, padding=1)
        self.mid = AutoencoderMiddle(widths[-1], mid_attention)
        levels = reversed(range(len(widths)))
        self.up = nn.ModuleList(
            AutoencoderLevel(widths[min(i + 1, len(widths) - 1)], widths[i], num_res_blocks + 1,
                             i in attention_levels, NearestUpsample(widths[i]) if i > 0 else None)
            for i in levels)
        self.norm_out = group_norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(self.post_quant_conv(z)))
        for level in self.up:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))
