"""Convolutional encoder and decoder of MaskGIT's VQGAN (StraIT Table 11), no attention.

Stage i works at 1/2^i of the input resolution with ``channels * channel_mult[i]``
channels, so ``len(channel_mult) - 1`` blurred 2x resamplings give the factor f.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from stratagen.nn import BlurDownsample, BlurUpsample, ResBlock, ResStage, group_norm


def _head(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(group_norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1))


class Encoder(nn.Module):
    """Images ``[B, 3, H, W]`` -> per-stage features; :meth:`forward` gives ``[B, out, H/f, W/f]``."""

    def __init__(self, channels: int, channel_mult: Sequence[int], num_res_blocks: int, out_channels: int):
        super().__init__()
        widths = [channels * m for m in channel_mult]
        self.conv_in = nn.Conv2d(3, channels, 3, padding=1)
        self.stages = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        previous = channels
        for i, width in enumerate(widths):
            self.stages.append(ResStage(previous, width, num_res_blocks))
            if i < len(widths) - 1:
                self.downsamples.append(BlurDownsample(width, width))
            previous = width
        self.mid = nn.Sequential(ResBlock(previous, previous), ResBlock(previous, previous))
        self.head = _head(previous, out_channels)
        self.widths = widths

    def stage_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Features at the end of every stage, ``[B, widths[i], H/2^i, W/2^i]``; the last
        one has passed the middle blocks."""
        h = self.conv_in(images)
        features = []
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if i == len(self.stages) - 1:
                h = self.mid(h)
            features.append(h)
            if i < len(self.downsamples):
                h = self.downsamples[i](h)
        return features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage_features(images)[-1])


class Decoder(nn.Module):
    """Latents ``[B, in, H/f, W/f]`` -> images ``[B, 3, H, W]``.

    ``fuse`` (optional) is applied after the first upsampling, i.e. at the decoder's
    second level, where StraIT's VQGAN2 brings in the bottom level (§3.1).
    """

    def __init__(self, channels: int, channel_mult: Sequence[int], num_res_blocks: int, in_channels: int):
        super().__init__()
        widths = [channels * m for m in reversed(channel_mult)]
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.mid = nn.Sequential(ResBlock(widths[0], widths[0]), ResBlock(widths[0], widths[0]))
        self.stages = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        previous = widths[0]
        for i, width in enumerate(widths):
            self.stages.append(ResStage(previous, width, num_res_blocks))
            if i < len(widths) - 1:
                self.upsamples.append(BlurUpsample(width, width))
            previous = width
        self.head = _head(previous, 3)
        self.widths = widths

    def forward(self, z: torch.Tensor, fuse: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if i < len(self.upsamples):
                h = self.upsamples[i](h)
            if i == 0 and fuse is not None:
                h = fuse(h)
        return self.head(h)
