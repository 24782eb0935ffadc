"""Convolutional pieces of the VQGAN (StraIT Table 11): GroupNorm + Swish
residual blocks and anti-aliased (blurred) or nearest 2x resampling."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, or the largest divisor of 32 that divides ``channels``."""
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)


class Blur(nn.Module):
    """Fixed depthwise [1,3,3,1] binomial low-pass filter.

    ``upsample=False``: [B,C,H,W] -> [B,C,H,W]. The 4-tap kernel is padded
    (1, 2) so that a following stride-2 conv (3x3 with padding 1, or 1x1)
    centres each output on its 2x2 input cell.

    ``upsample=True``: [B,C,H,W] -> [B,C,2H,2W] by zero insertion then the
    blur (gain 4), as StyleGAN2's upfirdn. Away from the border this is
    exactly bilinear interpolation; a nearest upsample followed by an
    even-length blur would instead shift the grid by half an output pixel.
    """

    def __init__(self, upsample: bool = False) -> None:
        super().__init__()
        self.upsample = upsample
        taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
        kernel = torch.outer(taps, taps)
        self.register_buffer("kernel", (kernel / kernel.sum())[None, None], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        kernel = self.kernel.to(x.dtype).expand(channels, 1, 4, 4)
        if self.upsample:
            return F.conv_transpose2d(x, 4 * kernel, stride=2, padding=1, groups=channels)
        return F.conv2d(F.pad(x, (1, 2, 1, 2)), kernel, groups=channels)


class BlurDownsample(nn.Module):
    """Blur then stride-2 conv; [B,in,H,W] -> [B,out,H/2,W/2] for even H, W.

    ``kernel_size`` is 3 for the main path; 1 gives the blurred 1x1 skip of a
    downsampling residual block.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.blur = Blur()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=2, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.blur(x))


class BlurUpsample(nn.Module):
    """Blurred 2x upsample then conv3x3; [B,in,H,W] -> [B,out,2H,2W]."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.blur = Blur(upsample=True)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.blur(x))


class NearestUpsample(nn.Module):
    """Nearest-neighbour 2x upsampling then conv3x3; [B,C,H,W] -> [B,C,2H,2W] (official MaskGIT's and
    taming's decoders)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResBlock(nn.Module):
    """(GroupNorm, SiLU, conv3x3) x 2 plus a shortcut; [B,in,H,W] -> [B,out,H,W].

    The shortcut is a 1x1 conv when the channel count changes, else identity.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            group_norm(in_channels),
            nn.SiLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            group_norm(out_channels),
            nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        if in_channels == out_channels:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.residual(x)


class ResStage(nn.Sequential):
    """``num_blocks`` ResBlocks, the first mapping in -> out channels; [B,in,H,W] -> [B,out,H,W]."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int) -> None:
        super().__init__(
            *(ResBlock(in_channels if i == 0 else out_channels, out_channels) for i in range(num_blocks))
        )
