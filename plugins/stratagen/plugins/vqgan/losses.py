"""VQGAN training losses: reconstruction, perceptual and adversarial (StraIT Eq. 2, Table 11).

Shared by every convolutional VQ tokenizer (``vqgan``, ``vqgan2-r``, ``vqgan2-c``).
"""
from __future__ import annotations

import functools
import logging
import torch
import torch.nn.functional as F
from torch import nn

from stratagen.nn import (PerceptualLoss, StyleGANDiscriminator, discriminator_loss, generator_adversarial_loss,
                          r1_penalty)
from stratagen.registry import MissingWeightsError

log = logging.getLogger(__name__)


@functools.cache
def _say_perceptual_off() -> None:
    """Said once per process, however many tokenizers are built."""
    log.warning("perceptual loss is off: no perceptual_weights file given (VGG16 ImageNet weights)")


class VQGANLoss(nn.Module):
    """Generator and discriminator losses of a VQ autoencoder.

    Generator: ||x - x_hat||^2 + quantizer loss + perceptual_weight * perceptual
    + gan_weight * non-saturating adversarial loss (from ``gan_start`` on).
    Discriminator: non-saturating loss + r1_cost * R1 penalty on real images (official
    MaskGIT's convention: no 1/2 factor).

    Args:
        resolution: image size seen by the StyleGAN discriminator.
        perceptual_weights: local path of VGG16 ImageNet weights; None turns the
            perceptual term off (said once in the log), never a random-feature loss.
    """

    def __init__(self, *, resolution: int, perceptual_weights: str | None, perceptual_weight: float,
                 gan_weight: float, gan_start: int, r1_cost: float, disc_channel_multiplier: int,
                 disc_max_channels: int):
        super().__init__()
        self.perceptual_weight = perceptual_weight
        self.gan_weight = gan_weight
        self.gan_start = gan_start
        self.r1_cost = r1_cost
        self.perceptual_weights = perceptual_weights
        # Kept outside the module tree: the frozen VGG is not part of the tokenizer's weights.
        self._perceptual: list[PerceptualLoss] = []
        if perceptual_weights is None and perceptual_weight > 0:
            _say_perceptual_off()
        self.discriminator = StyleGANDiscriminator(
            resolution, channel_multiplier=disc_channel_multiplier, max_channels=disc_max_channels,
        ) if gan_weight > 0 else None

    def train(self, mode: bool = True) -> "VQGANLoss":
        """Entering training loads the VGG16 weights (fails fast if the file is missing)."""
        if mode:
            self.perceptual_loss()
        return super().train(mode)

    def perceptual_loss(self) -> PerceptualLoss | None:
        if self.perceptual_weights is None or self.perceptual_weight == 0:
            return None
        if not self._perceptual:
            try:
                self._perceptual.append(PerceptualLoss(self.perceptual_weights))
            except FileNotFoundError as exc:
                raise MissingWeightsError(str(exc)) from None
        return self._perceptual[0]

    def adversarial_active(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.gan_start

    def generator_loss(self, images: torch.Tensor, reconstruction: torch.Tensor, quantizer_loss: torch.Tensor,
                       step: int) -> tuple[torch.Tensor, dict[str, float]]:
        reconstruction_loss = F.mse_loss(reconstruction, images)
        total = reconstruction_loss + quantizer_loss
        logs = {"reconstruction": reconstruction_loss.item(), "quantizer": quantizer_loss.item()}
        perceptual_net = self.perceptual_loss()
        if perceptual_net is not None:
            perceptual = perceptual_net.to(images.device)(reconstruction, images)
            total = total + self.perceptual_weight * perceptual
            logs["perceptual"] = perceptual.item()
        if self.adversarial_active(step):
            adversarial = generator_adversarial_loss(self.discriminator(reconstruction))
            total = total + self.gan_weight * adversarial
            logs["generator_adversarial"] = adversarial.item()
        return total, logs

    def discriminator_loss(self, images: torch.Tensor, reconstruction: torch.Tensor,
                           step: int) -> tuple[torch.Tensor, dict[str, float]]:
        if not self.adversarial_active(step):
            return images.new_zeros(()), {}
        real = images.detach().requires_grad_(True)
        real_logits = self.discriminator(real)
        fake_logits = self.discriminator(reconstruction.detach())
        adversarial = discriminator_loss(real_logits, fake_logits)
        r1 = r1_penalty(real, real_logits)
        return adversarial + self.r1_cost * r1, {"discriminator": adversarial.item(), "r1": r1.item()}
