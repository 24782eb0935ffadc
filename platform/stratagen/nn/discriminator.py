"""StyleGAN-style residual discriminator (StraIT Table 11) and its losses.

Losses are the non-saturating logistic GAN losses of StyleGAN / MaskGIT.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stratagen.nn.conv import BlurDownsample, group_norm


class DiscriminatorBlock(nn.Module):
    """Residual 2x downsampling block; [B,in,H,W] -> [B,out,H/2,W/2].

    main: GroupNorm, LeakyReLU, conv3x3, GroupNorm, LeakyReLU, blur + stride-2 conv3x3.
    skip: blur + stride-2 conv1x1. The sum is scaled by 1/sqrt(2) to keep the variance.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            group_norm(in_channels),
            nn.LeakyReLU(0.2),
            nn.Conv2d(in_channels, in_channels, 3, padding=1),
            group_norm(in_channels),
            nn.LeakyReLU(0.2),
            BlurDownsample(in_channels, out_channels),
        )
        self.skip = BlurDownsample(in_channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return (self.main(x) + self.skip(x)) / math.sqrt(2)


def stylegan_filters(resolution: int, channel_multiplier: int = 1, max_channels: int = 512) -> int:
    """Channels of StyleGAN's discriminator at feature resolution ``resolution``.

    The StyleGAN filter table (as in official MaskGIT's discriminator): 512 up to 32 px, then
    ``channel_multiplier`` x (256, 128, 64, 32, 16) at 64, 128, 256, 512, 1024 px; capped
    at ``max_channels``.
    """
    return min(max_channels, 512 if resolution <= 32 else channel_multiplier * (16384 // resolution))


class StyleGANDiscriminator(nn.Module):
    """Images [B,in_channels,R,R] -> one real/fake logit per image [B].

    A conv3x3 stem, then DiscriminatorBlocks halving the resolution down to
    4x4, then conv3x3, GroupNorm, LeakyReLU, flatten, linear, LeakyReLU,
    linear. Features at resolution r have :func:`stylegan_filters` (r) channels
    (StraIT Table 11: "#channel multi. of d [1]"; about 24M parameters at 256 px).
    """

    def __init__(
        self,
        resolution: int,
        in_channels: int = 3,
        channel_multiplier: int = 1,
        max_channels: int = 512,
    ) -> None:
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
        num_blocks = int(math.log2(resolution)) - 2
        widths = [stylegan_filters(resolution >> i, channel_multiplier, max_channels) for i in range(num_blocks + 1)]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.blocks = nn.Sequential(
            *(DiscriminatorBlock(widths[i], widths[i + 1]) for i in range(num_blocks))
        )
        last = widths[-1]
        self.head = nn.Sequential(
            nn.Conv2d(last, last, 3, padding=1),
            group_norm(last),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(last * 4 * 4, last),
            nn.LeakyReLU(0.2),
            nn.Linear(last, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: [B,in_channels,R,R] -> logits [B]."""
        return self.head(self.blocks(self.stem(x))).squeeze(1)


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Logistic loss for D: softplus(-real).mean() + softplus(fake).mean()."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_adversarial_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating loss for G: softplus(-fake).mean()."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_images: Tensor, real_logits: Tensor) -> Tensor:
    """Mean over the batch of ||d sum(real_logits) / d real_images||^2.

    ``real_images`` must require grad and ``real_logits`` be computed from
    them. The graph is kept so the penalty can be backpropagated. The value
    has no gamma and no 1/2 factor: official MaskGIT (``libml/losses.py``) adds
    ``penalty_cost * mean ||grad||^2`` to the discriminator loss, so the caller
    multiplies by its cost (StraIT Table 11: 10) as it is.
    """
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()
