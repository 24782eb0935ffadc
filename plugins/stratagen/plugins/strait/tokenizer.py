"""VQGAN2: StraIT's stratified two-level tokenizer (§3.1, Figure 3).

The encoder (VQ-VAE-2 style) yields features at f/2 and f (8 and 16 at 256 px). The f map
is quantized first into the ``top`` level; a latent conditional layer (residual blocks)
upscales the quantized top map, which is stacked with the f/2 features and quantized
into the ``bottom`` level. The decoder fuses the two quantized maps in one of three ways:

- ``residual`` (VQGAN2-R, "stratified residual fusion", §3.1 and App. B): the decoder starts
  from the top latents at f; after its first upsampling (its second level, f/2) the bottom
  latents are added as a residual, so the top level alone still decodes (without detail);
- ``concat`` (VQGAN2-C as the paper builds it, §3.1 and App. B, following VQ-VAE-2): the
  quantized top map is upscaled x2 by one transposed convolution and concatenated with the
  quantized bottom map at the decoder's input; the decoder runs from f/2. Every path from
  the top level to the image goes through that concatenation; both levels are needed;
- ``concat-stem`` (not the paper's; stratagen's VQGAN2-C before issue 22, kept to load its
  checkpoints and for comparison): the top latents go through the decoder's whole f stem
  as in R, and the bottom latents are concatenated at the second level and projected back.

Options for VQGAN2-R that are not the paper's (all off by default), the usual ways to make a
coarse level carry the image on its own (``benchmarks/level_study.py`` measures what each does):

- ``zero_init_fusion``: the residual projection starts at zero, so the decoder first learns to
  decode the top level alone;
- ``bottom_dropout``: during training each image's bottom residual is dropped with this
  probability, so the top level must reconstruct alone that often;
- ``top_only_weight``: adds ``weight * MSE(decode(top alone), image)`` to the training loss.
"""
from __future__ import annotations

from functools import partial
from typing import Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stratagen.nn import BlurUpsample, ResStage, VectorQuantizer, group_norm
from stratagen.plugins.vqgan import Decoder, Encoder, VQGANLoss, VQTokenizer
from stratagen.registry import AutoencoderOutput, LevelSpec, TokenGrids


class ResidualFusion(nn.Module):
    """VQGAN2-R: ``h + conv(z_bottom)``; h ``[B, C, h, w]``, z_bottom ``[B, D, h, w]``.

    With ``keep`` ``[B, 1, 1, 1]`` (0 or 1) the residual of the images where it is 0 is dropped.
    """

    def __init__(self, embedding_dim: int, channels: int, zero_init: bool = False):
        super().__init__()
        self.project = nn.Conv2d(embedding_dim, channels, 3, padding=1)
        if zero_init:
            nn.init.zeros_(self.project.weight)
            nn.init.zeros_(self.project.bias)

    def forward(self, h: torch.Tensor, z_bottom: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        residual = self.project(z_bottom)
        return h + (residual if keep is None else residual * keep)


class ConcatFusion(nn.Module):
    """``concat-stem`` (not the paper's VQGAN2-C): ``conv([h, z_bottom])`` back to C channels."""

    def __init__(self, embedding_dim: int, channels: int):
        super().__init__()
        self.project = nn.Conv2d(channels + embedding_dim, channels, 3, padding=1)

    def forward(self, h: torch.Tensor, z_bottom: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([h, z_bottom], dim=1))


Fusion = Literal["residual", "concat", "concat-stem"]


class VQGAN2Tokenizer(VQTokenizer):
    """Two levels: ``top`` at factor f, ``bottom`` at f/2 (16x16 and 32x32 at 256 px, f=16).

    Args:
        fusion: ``residual`` (VQGAN2-R), ``concat`` (the paper's VQGAN2-C) or ``concat-stem``
            (an earlier, not the paper's, VQGAN2-C); see the module docstring.
        codebook_size: the shared codebook (StraIT's default, 8192) or the top codebook
            when ``bottom_codebook_size`` is given (separate codebooks, Table 8).
        latent_blocks: residual blocks of the latent conditional layer.
        zero_init_fusion, bottom_dropout, top_only_weight: VQGAN2-R options that are not the
            paper's (module docstring); ValueError with ``concat`` fusion.
        Others as :class:`stratagen.plugins.vqgan.VQGANTokenizer` (the codebook options apply
            to both levels' quantizers).
    """

    level_names = ("top", "bottom")

    def __init__(self, *, resolution: int, fusion: Fusion, channels: int,
                 channel_mult: Sequence[int], num_res_blocks: int, codebook_size: int,
                 bottom_codebook_size: int | None, embedding_dim: int, commitment_cost: float,
                 restart_dead_codes: bool, dead_code_steps: int = 100, code_dim: int | None = None, l2_normalized_codes: bool = False,
                 entropy_loss_weight: float = 0.0, entropy_temperature: float = 0.01, latent_blocks: int,
                 zero_init_fusion: bool = False, bottom_dropout: float = 0.0, top_only_weight: float = 0.0,
                 loss: VQGANLoss):
        super().__init__()
        if fusion != "residual" and (zero_init_fusion or bottom_dropout or top_only_weight):
            raise ValueError("zero_init_fusion, bottom_dropout and top_only_weight need the residual fusion "
                             "(vqgan2-r): with concat fusion the top level does not decode alone")
        self.fusion_kind = fusion
        self.bottom_dropout = bottom_dropout
        self.top_only_weight = top_only_weight
        self.factor = 2 ** (len(channel_mult) - 1)
        self._check_size(resolution, resolution)
        self.encoder = Encoder(channels, channel_mult, num_res_blocks, embedding_dim)
        bottom_features = self.encoder.widths[-2]
        self.latent_conditional = nn.Sequential(
            ResStage(embedding_dim, bottom_features, latent_blocks), BlurUpsample(bottom_features, embedding_dim))
        self.bottom_head = nn.Sequential(group_norm(bottom_features + embedding_dim), nn.SiLU(),
                                         nn.Conv2d(bottom_features + embedding_dim, embedding_dim, 3, padding=1))
        quantizer = partial(VectorQuantizer, dim=embedding_dim, commitment_cost=commitment_cost,
                            restart_dead_codes=restart_dead_codes, dead_code_steps=dead_code_steps, code_dim=code_dim,
                            l2_normalize=l2_normalized_codes, entropy_loss_weight=entropy_loss_weight,
                            entropy_temperature=entropy_temperature)
        self.top_quantizer = quantizer(codebook_size)
        self.separate_bottom_quantizer = None if bottom_codebook_size is None else quantizer(bottom_codebook_size)
        self.codebook_sizes = (codebook_size, bottom_codebook_size or codebook_size)
        if fusion == "concat":
            # VQ-VAE-2's decoder input: top upscaled by one transposed conv (f -> f/2), then concatenated
            self.top_upsample = nn.ConvTranspose2d(embedding_dim, embedding_dim, 4, stride=2, padding=1)
            self.decoder = Decoder(channels, channel_mult[:-1], num_res_blocks, 2 * embedding_dim)
        else:
            # the fusions at the decoder's second level, after the top latents went through its f stem
            self.decoder = Decoder(channels, channel_mult, num_res_blocks, embedding_dim)
            self.fusion = (ResidualFusion(embedding_dim, self.decoder.widths[0], zero_init_fusion)
                           if fusion == "residual" else ConcatFusion(embedding_dim, self.decoder.widths[0]))
        self.loss_fn = loss

    @property
    def bottom_quantizer(self) -> VectorQuantizer:
        """The bottom level's quantizer: the shared codebook unless a separate one is configured."""
        return self.separate_bottom_quantizer or self.top_quantizer

    def level_specs(self, resolution: int) -> tuple[LevelSpec, ...]:
        top, bottom = resolution // self.factor, resolution * 2 // self.factor
        return (LevelSpec("top", top, top, self.codebook_sizes[0]),
                LevelSpec("bottom", bottom, bottom, self.codebook_sizes[1]))

    def describe(self) -> str:
        return {"residual": "fusion residual: bottom added at the decoder's second level (VQGAN2-R)",
                "concat": "fusion concat: top upscaled by a transposed conv, concatenated with bottom at the "
                          "decoder input (paper's VQGAN2-C)",
                "concat-stem": "fusion concat-stem: top through the decoder's f stem, bottom concatenated at its "
                               "second level (not the paper's)"}[self.fusion_kind]

    def can_decode(self, levels: set[str]) -> bool:
        return levels == {"top", "bottom"} or (self.fusion_kind == "residual" and levels == {"top"})

    def _quantize(self, images: torch.Tensor):
        self._check_resolution(images)
        features = self.encoder.stage_features(images)
        top = self.top_quantizer(self.encoder.head(features[-1]))
        stacked = torch.cat([features[-2], self.latent_conditional(top.z_q)], dim=1)
        bottom = self.bottom_quantizer(self.bottom_head(stacked))
        return top, bottom

    def _decode_latents(self, z_top: torch.Tensor, z_bottom: torch.Tensor | None,
                        keep: torch.Tensor | None = None) -> torch.Tensor:
        """Quantized latents ``[B, D, h, w]`` and ``[B, D, 2h, 2w]`` (None: R's top alone) -> images;
        ``keep`` ``[B, 1, 1, 1]``: R's bottom residual per image (``bottom_dropout``)."""
        if self.fusion_kind == "concat":
            return self.decoder(torch.cat([self.top_upsample(z_top), z_bottom], dim=1))
        if z_bottom is None:
            return self.decoder(z_top, None)
        dropped = () if keep is None else (keep,)
        return self.decoder(z_top, lambda h: self.fusion(h, z_bottom, *dropped))

    def autoencode(self, images: torch.Tensor) -> AutoencoderOutput:
        top, bottom = self._quantize(images)
        stats = {name: {"perplexity": q.perplexity.item(), "usage": q.usage.item()}
                 for name, q in (("top", top), ("bottom", bottom))}
        keep = None
        if self.training and self.bottom_dropout > 0:
            keep = (torch.rand(len(images), 1, 1, 1, device=images.device) >= self.bottom_dropout).to(images.dtype)
        auxiliary = {}
        if self.training and self.top_only_weight > 0:
            top_only = self._decode_latents(top.z_q, None)
            auxiliary["top_only_reconstruction"] = self.top_only_weight * F.mse_loss(top_only, images)
        return AutoencoderOutput(self._decode_latents(top.z_q, bottom.z_q, keep),
                                 TokenGrids({"top": top.indices, "bottom": bottom.indices}),
                                 top.loss + bottom.loss, stats, auxiliary)

    def encode(self, images: torch.Tensor) -> TokenGrids:
        top, bottom = self._quantize(images)
        return TokenGrids({"top": top.indices, "bottom": bottom.indices})

    def decode(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not self.can_decode(set(tokens)):
            raise ValueError(f"vqgan2 ({self.fusion_kind}) cannot decode levels {sorted(tokens)}")
        z_top = self.top_quantizer.lookup(tokens["top"])
        z_bottom = self.bottom_quantizer.lookup(tokens["bottom"]) if "bottom" in tokens else None
        return self._decode_latents(z_top, z_bottom)
