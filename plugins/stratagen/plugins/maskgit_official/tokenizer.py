"""Official MaskGIT VQGAN (``maskgit/nets/vqgan_tokenizer.py``): the architecture of its released tokenizer.

It differs from stratagen's ``vqgan`` (the StraIT Table 11 recipe) in ways that matter for its weights:
convolutions without bias inside residual blocks; a 1x1 shortcut, where the width changes, that is
applied to the residual branch's output (``h + W h``, as the official code does); 2x2 average-pool
downsampling and nearest-neighbour upsampling followed by a 3x3 conv (no blur); no middle blocks in
the encoder before the last stage's extra residual blocks; images in [0, 1]. The weights load as
they are; stratagen's [-1, 1] images are mapped to and from [0, 1] at the boundary.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from stratagen.nn import NearestUpsample, group_norm
from stratagen.plugins.vqgan import VQGANTokenizer


class OfficialResBlock(nn.Module):
    """GroupNorm, swish, conv3x3 (no bias), twice; [B,in,H,W] -> [B,out,H,W].

    Same width: ``x + h``. Width change: ``h + conv1x1(h)`` (the official block's shortcut takes
    the branch output, not the input).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.branch = nn.Sequential(
            group_norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            group_norm(out_channels), nn.SiLU(), nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False))
        self.shortcut = None if in_channels == out_channels else nn.Conv2d(out_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.branch(x)
        return x + h if self.shortcut is None else h + self.shortcut(h)


def _blocks(in_channels: int, out_channels: int, count: int) -> list[OfficialResBlock]:
    return [OfficialResBlock(in_channels if i == 0 else out_channels, out_channels) for i in range(count)]


class OfficialEncoder(nn.Module):
    """Images [B,3,H,W] in [-1, 1] -> latents [B, embedding_dim, H/f, W/f], f = 2^(len(channel_mult) - 1).

    The official network sees [0, 1] images: the mapping is its first step.
    """

    def __init__(self, filters: int, channel_mult: Sequence[int], num_res_blocks: int, embedding_dim: int):
        super().__init__()
        self.conv_in = nn.Conv2d(3, filters, 3, padding=1, bias=False)
        layers: list[nn.Module] = []
        width = filters
        for i, mult in enumerate(channel_mult):
            layers += _blocks(width, filters * mult, num_res_blocks)
            width = filters * mult
            if i < len(channel_mult) - 1:
                layers.append(nn.AvgPool2d(2))
        layers += _blocks(width, width, num_res_blocks)
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(group_norm(width), nn.SiLU(), nn.Conv2d(width, embedding_dim, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.conv_in((images + 1) / 2)))


class OfficialDecoder(nn.Module):
    """Latents [B, embedding_dim, h, w] -> images [B,3,h f,w f] in [-1, 1] (the official [0, 1] output,
    mapped)."""

    def __init__(self, filters: int, channel_mult: Sequence[int], num_res_blocks: int, embedding_dim: int):
        super().__init__()
        width = filters * channel_mult[-1]
        self.conv_in = nn.Conv2d(embedding_dim, width, 3, padding=1)
        layers: list[nn.Module] = _blocks(width, width, num_res_blocks)
        for i in reversed(range(len(channel_mult))):
            layers += _blocks(width, filters * channel_mult[i], num_res_blocks)
            width = filters * channel_mult[i]
            if i > 0:
                layers.append(NearestUpsample(width))
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(group_norm(width), nn.SiLU(), nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.conv_in(z))) * 2 - 1


class OfficialVQGANTokenizer(VQGANTokenizer):
    """Official MaskGIT's VQGAN as a one-level (``tokens``) stratagen tokenizer: :class:`VQGANTokenizer`
    with the official encoder and decoder (same arguments; official: 128 channels,
    [1, 1, 2, 2, 4], 2 blocks, 1024 x 256 codes with a Euclidean lookup)."""

    encoder_class = OfficialEncoder
    decoder_class = OfficialDecoder
