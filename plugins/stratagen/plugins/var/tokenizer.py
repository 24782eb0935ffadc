"""VAR's multi-scale residual VQ tokenizer (Tian et al. 2024, Alg. 1 and 2; STAR slides "VAR:
Multiscale Image quantizer").

One encoder map f ``[B, C, H, W]`` is quantized at K growing scales with one shared codebook:
scale k quantizes the residual area-downsampled to ``h_k x w_k``, its codes are upsampled
(bicubic) back to ``H x W``, passed through the scale's own convolution phi_k and subtracted
from the residual. Decoding sums the K contributions into f_hat and runs the decoder. Every
scale is a level (``s1`` ... ``sK``), so evaluation reports per-scale perplexity and usage;
any coarsest-first prefix of the scales decodes (reconstruction from the first k scales).

Encoder, decoder, quantizer and losses are the VQGAN building blocks; each scale's quantizer
loss is VQGAN's codebook + commitment loss on its residual (VAR puts the loss on f_hat; the
per-scale form keeps :class:`~stratagen.nn.VectorQuantizer` unchanged), averaged over scales.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stratagen.nn import QuantizerOutput, VectorQuantizer
from stratagen.plugins.vqgan import VQGANLoss, VQTokenizer
from stratagen.registry import AutoencoderOutput, LevelSpec, MultiScaleTokenizer, TokenGrids


class Phi(nn.Module):
    """VAR's phi_k: ``(1 - ratio) z + ratio conv3x3(z)`` on upsampled codes ``[B, C, H, W]``
    (VAR's ``Phi`` with its residual ratio 0.5)."""

    def __init__(self, dim: int, ratio: float = 0.5):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.ratio = ratio

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (1 - self.ratio) * z + self.ratio * self.conv(z)


def phi_index(scale: int, num_scales: int, num_phis: int) -> int:
    """Which of ``num_phis`` partially shared phi convs scale ``scale`` (0-based) of ``num_scales`` uses.

    VAR's ``PhiPartiallyShared``: the phis sit at ticks spread over [0, 1] (from 1/(3n) to
    1 - 1/(3n) for n = 4, from 1/(2n) to 1 - 1/(2n) otherwise) and scale k takes the tick nearest
    to k / (K - 1), the first on a tie. For 10 scales and 4 phis: 0, 0, 1, 1, 1, 2, 2, 3, 3, 3.
    """
    if num_phis == 1 or num_scales == 1:
        return 0
    margin = 1 / (3 * num_phis) if num_phis == 4 else 1 / (2 * num_phis)
    # Ties are real (10 scales, 4 phis: scales 2 and 7 sit halfway between two ticks): numpy's float64
    # linspace and argmin, as VAR computes them, decide them.
    ticks = np.linspace(margin, 1 - margin, num_phis)
    return int(np.argmin(np.abs(ticks - scale / (num_scales - 1))))


class MultiScaleVQTokenizer(VQTokenizer, MultiScaleTokenizer):
    """K scales of residual VQ over the map of one encoder with downsampling factor ``factor``.

    Args:
        encoder, decoder: build the networks images ``[B, 3, H, W]`` -> features
            ``[B, embedding_dim, H/f, W/f]`` and back (``msvq``: stratagen's VQGAN networks,
            ``var-vqvae``: VAR's LDM ones); called in the order encoder, quantizer, phis, decoder
            so that a seeded initialisation stays what it was.
        factor: the encoder's downsampling factor f.
        resolution: training image size; ``scales[-1]`` must be ``resolution / f``.
        scales: token-grid sides, coarse to fine (VAR at 256 px, f16: 1, 2, 3, 4, 5, 6, 8, 10, 13, 16).
        phi_ratio: residual ratio of each phi (VAR: 0.5).
        shared_phis: 0: one phi_k per scale; n: n phi convs shared by the K scales as VAR's
            partially shared phi (:func:`phi_index`; VAR: 4).
        Others as :class:`stratagen.plugins.vqgan.VQGANTokenizer`.
    """

    def __init__(self, *, encoder: Callable[[], nn.Module], decoder: Callable[[], nn.Module], factor: int, resolution: int,
                 scales: Sequence[int], phi_ratio: float, shared_phis: int = 0, codebook_size: int,
                 embedding_dim: int, commitment_cost: float, restart_dead_codes: bool, dead_code_steps: int = 100,
                 code_dim: int | None = None, l2_normalized_codes: bool = False, entropy_loss_weight: float = 0.0,
                 entropy_temperature: float = 0.01, loss: VQGANLoss):
        super().__init__()
        self.factor = factor
        if list(scales) != sorted(set(scales)) or scales[-1] != resolution // self.factor:
            raise ValueError(f"scales {list(scales)} must increase strictly and end at the token grid side "
                             f"{resolution // self.factor} (resolution {resolution} / factor {self.factor})")
        self.scales = tuple(scales)
        self.codebook_size = codebook_size
        self.embedding_dim = embedding_dim
        self.encoder = encoder()
        self.quantizer = VectorQuantizer(codebook_size, embedding_dim, commitment_cost, restart_dead_codes,
                                         dead_code_steps, code_dim=code_dim, l2_normalize=l2_normalized_codes,
                                         entropy_loss_weight=entropy_loss_weight,
                                         entropy_temperature=entropy_temperature)
        self.phis = nn.ModuleList(Phi(embedding_dim, phi_ratio) for _ in range(shared_phis or len(scales)))
        self.phi_of_scale = [phi_index(k, len(scales), shared_phis) if shared_phis else k for k in range(len(scales))]
        self.decoder = decoder()
        self.loss_fn = loss

    @property
    def level_names(self) -> tuple[str, ...]:
        """``s1`` ... ``sK``, coarse to fine."""
        return tuple(f"s{k + 1}" for k in range(len(self.scales)))

    @property
    def feature_dim(self) -> int:
        return self.embedding_dim

    def level_specs(self, resolution: int) -> tuple[LevelSpec, ...]:
        if resolution // self.factor != self.scales[-1]:
            raise ValueError(f"this tokenizer's scales end at {self.scales[-1]} tokens, i.e. "
                             f"{self.scales[-1] * self.factor} px, not {resolution} px")
        return tuple(LevelSpec(name, side, side, self.codebook_size) for name, side in zip(self.level_names, self.scales))

    def can_decode(self, levels: set[str]) -> bool:
        """Any coarsest-first prefix ``s1 .. sk`` of the scales."""
        return bool(levels) and levels == set(self.level_names[: len(levels)])

    def _contribution(self, scale: int, codes: torch.Tensor) -> torch.Tensor:
        """phi_k of scale ``scale``'s codes ``[B, C, h, w]`` upsampled to the finest grid (Alg. 1 lines 7-9)."""
        side = self.scales[-1]
        if codes.shape[-1] != side:
            codes = F.interpolate(codes, size=(side, side), mode="bicubic")
        return self.phis[self.phi_of_scale[scale]](codes)

    def accumulate(self, features: torch.Tensor | None, scale: int, tokens: torch.Tensor) -> torch.Tensor:
        contribution = self._contribution(scale, self.quantizer.lookup(tokens))
        return contribution if features is None else features + contribution

    def _quantize(self, images: torch.Tensor) -> tuple[torch.Tensor, list[QuantizerOutput]]:
        """Alg. 1: f_hat ``[B, C, H/f, W/f]`` and each scale's quantizer output."""
        self._check_resolution(images)
        residual = self.encoder(images)
        f_hat = torch.zeros_like(residual)
        outputs = []
        for k, side in enumerate(self.scales):
            down = residual if side == residual.shape[-1] else F.interpolate(residual, size=(side, side), mode="area")
            q = self.quantizer(down)
            contribution = self._contribution(k, q.z_q)
            residual = residual - contribution
            f_hat = f_hat + contribution
            outputs.append(q)
        return f_hat, outputs

    def autoencode(self, images: torch.Tensor) -> AutoencoderOutput:
        f_hat, outputs = self._quantize(images)
        stats = {name: {"perplexity": q.perplexity.item(), "usage": q.usage.item()}
                 for name, q in zip(self.level_names, outputs)}
        tokens = TokenGrids({name: q.indices for name, q in zip(self.level_names, outputs)})
        loss = torch.stack([q.loss for q in outputs]).mean()
        return AutoencoderOutput(self.decoder(f_hat), tokens, loss, stats)

    def encode(self, images: torch.Tensor) -> TokenGrids:
        return TokenGrids({name: q.indices for name, q in zip(self.level_names, self._quantize(images)[1])})

    def decode(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Alg. 2 over the given scales (all, or the coarsest k)."""
        if not self.can_decode(set(tokens)):
            raise ValueError(f"multi-scale VQ decodes a coarsest-first prefix of {list(self.level_names)}, "
                             f"got {sorted(tokens)}")
        f_hat = None
        for k, name in enumerate(self.level_names[: len(tokens)]):
            f_hat = self.accumulate(f_hat, k, tokens[name])
        return self.decoder(f_hat)
