"""MaskGIT's VQGAN tokenizer: one level of f=2^(len(channel_mult)-1) tokens."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from stratagen.nn import VectorQuantizer
from stratagen.registry import AutoencoderOutput, LevelSpec, TokenGrids, Tokenizer

from .losses import VQGANLoss
from .networks import Decoder, Encoder


class VQTokenizer(Tokenizer):
    """Shared training logic of convolutional VQ tokenizers trained with :class:`VQGANLoss`.

    Parameter groups: ``generator`` (everything but the discriminator) and
    ``discriminator``.
    """

    loss_fn: VQGANLoss
    factor: int

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        discriminator = list(self.loss_fn.discriminator.parameters()) if self.loss_fn.discriminator else []
        ids = {id(p) for p in discriminator}
        groups = {"generator": [p for p in self.parameters() if id(p) not in ids and p.requires_grad]}
        if discriminator:
            groups["discriminator"] = discriminator
        return groups

    def losses(self, images: torch.Tensor, step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        out = self.autoencode(images)
        generator, logs = self.loss_fn.generator_loss(images, out.reconstruction, out.quantizer_loss, step)
        for name, term in out.auxiliary_losses.items():
            generator = generator + term
            logs[name] = term.item()
        losses = {"generator": generator}
        if self.loss_fn.discriminator is not None:
            losses["discriminator"], d_logs = self.loss_fn.discriminator_loss(images, out.reconstruction, step)
            logs.update(d_logs)
        for level, stats in out.level_stats.items():
            logs.update({f"{name}/{level}": value for name, value in stats.items()})
        return losses, logs

    def _check_resolution(self, images: torch.Tensor) -> None:
        self._check_size(*images.shape[-2:])

    def _check_size(self, height: int, width: int) -> None:
        """ValueError unless images of ``height`` x ``width`` split into whole tokens."""
        if height % self.factor or width % self.factor:
            raise ValueError(f"image size {(height, width)} is not divisible by the factor {self.factor}; "
                             f"use a resolution that is a multiple of {self.factor}")


class VQGANTokenizer(VQTokenizer):
    """Encoder -> vector quantizer -> decoder, one level named ``tokens``.

    Args:
        resolution: training image size (for the discriminator).
        channels, channel_mult, num_res_blocks: encoder/decoder widths (Table 11:
            128, [1, 1, 2, 2, 4] for f=16, 2).
        codebook_size, embedding_dim, commitment_cost: quantizer (8192, 32, 0.25).
        restart_dead_codes, dead_code_steps: re-initialise codes unused for ``dead_code_steps``
            training steps from encoder outputs.
        code_dim, l2_normalized_codes, entropy_loss_weight, entropy_temperature: codebook
            options of :class:`stratagen.nn.VectorQuantizer` (ViT-VQGAN codes, MaskGIT's
            entropy loss).
        loss: the VQGAN losses (perceptual, adversarial).
    """

    level_names = ("tokens",)
    #: the networks around the quantizer; a variant with other networks (e.g. official MaskGIT's) swaps them
    encoder_class: type[nn.Module] = Encoder
    decoder_class: type[nn.Module] = Decoder

    def __init__(self, *, resolution: int, channels: int, channel_mult: Sequence[int], num_res_blocks: int,
                 codebook_size: int, embedding_dim: int, commitment_cost: float, restart_dead_codes: bool,
                 dead_code_steps: int = 100, code_dim: int | None = None, l2_normalized_codes: bool = False, entropy_loss_weight: float = 0.0,
                 entropy_temperature: float = 0.01, loss: VQGANLoss):
        super().__init__()
        self.factor = 2 ** (len(channel_mult) - 1)
        self._check_size(resolution, resolution)
        self.codebook_size = codebook_size
        self.encoder = self.encoder_class(channels, channel_mult, num_res_blocks, embedding_dim)
        self.quantizer = VectorQuantizer(codebook_size, embedding_dim, commitment_cost, restart_dead_codes,
                                         dead_code_steps, code_dim=code_dim, l2_normalize=l2_normalized_codes,
                                         entropy_loss_weight=entropy_loss_weight,
                                         entropy_temperature=entropy_temperature)
        self.decoder = self.decoder_class(channels, channel_mult, num_res_blocks, embedding_dim)
        self.loss_fn = loss

    def level_specs(self, resolution: int) -> tuple[LevelSpec, ...]:
        side = resolution // self.factor
        return (LevelSpec("tokens", side, side, self.codebook_size),)

    def autoencode(self, images: torch.Tensor) -> AutoencoderOutput:
        self._check_resolution(images)
        q = self.quantizer(self.encoder(images))
        stats = {"tokens": {"perplexity": q.perplexity.item(), "usage": q.usage.item()}}
        return AutoencoderOutput(self.decoder(q.z_q), TokenGrids({"tokens": q.indices}), q.loss, stats)

    def encode(self, images: torch.Tensor) -> TokenGrids:
        self._check_resolution(images)
        return TokenGrids({"tokens": self.quantizer(self.encoder(images)).indices})

    def decode(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.decoder(self.quantizer.lookup(tokens["tokens"]))
