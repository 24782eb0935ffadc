"""Tokenizers on the LDM/taming autoencoder (:mod:`stratagen.nn.ldm`).

- :class:`LDMVQTokenizer`: one level of codes (LlamaGen's VQ, l2-normalised codes; taming's VQGAN
  with a Euclidean lookup), the ``llamagen-vq`` plugin;
- :func:`build_var_tokenizer`: VAR's VQVAE, the multi-scale residual quantizer of the ``msvq``
  plugin around these networks with VAR's partially shared phi, the ``var-vqvae`` plugin.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Sequence

from stratagen.nn import LDMDecoder, LDMEncoder, VectorQuantizer
from stratagen.plugins.var import MultiScaleVQTokenizer
from stratagen.plugins.vqgan import VQGANLoss, VQGANTokenizer, VQTokenizer


def ldm_sizes(*, channels: int, channel_mult: Sequence[int], num_res_blocks: int, z_channels: int,
              embedding_dim: int, attention_levels: Sequence[int] | None, mid_attention: bool,
              quant_kernel: int) -> dict[str, Any]:
    """The keyword arguments of :class:`LDMEncoder` and :class:`LDMDecoder` for these settings
    (``attention_levels`` None: the coarsest level only)."""
    return dict(channels=channels, channel_mult=channel_mult, num_res_blocks=num_res_blocks, z_channels=z_channels,
                embedding_dim=embedding_dim, mid_attention=mid_attention, quant_kernel=quant_kernel,
                attention_levels=(len(channel_mult) - 1,) if attention_levels is None else attention_levels)


class LDMVQTokenizer(VQGANTokenizer):
    """:class:`VQGANTokenizer` (one level ``tokens``, its training losses, encode and decode) around the
    LDM encoder and decoder; ``l2_normalized_codes`` gives LlamaGen's lookup (latents and codes
    l2-normalised, nearest by cosine, the unit code decoded).

    Args:
        resolution: training image size.
        channels, channel_mult, num_res_blocks, z_channels, embedding_dim, attention_levels,
            mid_attention, quant_kernel: the networks (:class:`stratagen.nn.LDMEncoder`; LlamaGen VQ-16:
            128, [1, 1, 2, 2, 4], 2, 256, 8, the last level, with, 1).
        Others as :class:`VQGANTokenizer` (LlamaGen VQ-16: 16384 codes, l2-normalised).
    """

    def __init__(self, *, resolution: int, channels: int, channel_mult: Sequence[int], num_res_blocks: int,
                 z_channels: int, attention_levels: Sequence[int] | None, mid_attention: bool, quant_kernel: int,
                 codebook_size: int, embedding_dim: int, commitment_cost: float, restart_dead_codes: bool,
                 dead_code_steps: int = 100, code_dim: int | None = None, l2_normalized_codes: bool = False,
                 entropy_loss_weight: float = 0.0, entropy_temperature: float = 0.01, loss: VQGANLoss):
        VQTokenizer.__init__(self)  # VQGANTokenizer's own __init__ builds stratagen's VQGAN networks
        self.factor = 2 ** (len(channel_mult) - 1)
        self._check_size(resolution, resolution)
        self.codebook_size = codebook_size
        sizes = ldm_sizes(channels=channels, channel_mult=channel_mult, num_res_blocks=num_res_blocks,
                          z_channels=z_channels, embedding_dim=embedding_dim, attention_levels=attention_levels,
                          mid_attention=mid_attention, quant_kernel=quant_kernel)
        self.encoder, self.decoder = LDMEncoder(**sizes), LDMDecoder(**sizes)
        self.quantizer = VectorQuantizer(codebook_size, embedding_dim, commitment_cost, restart_dead_codes,
                                         dead_code_steps, code_dim=code_dim, l2_normalize=l2_normalized_codes,
                                         entropy_loss_weight=entropy_loss_weight,
                                         entropy_temperature=entropy_temperature)
        self.loss_fn = loss


def build_var_tokenizer(*, channels: int, channel_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                        embedding_dim: int, attention_levels: Sequence[int] | None, mid_attention: bool,
                        quant_kernel: int, **fields) -> MultiScaleVQTokenizer:
    """VAR's VQVAE: :class:`MultiScaleVQTokenizer` (``fields``: its quantizer, scales, phi and loss
    arguments) around the LDM networks."""
    sizes = ldm_sizes(channels=channels, channel_mult=channel_mult, num_res_blocks=num_res_blocks,
                      z_channels=z_channels, embedding_dim=embedding_dim, attention_levels=attention_levels,
                      mid_attention=mid_attention, quant_kernel=quant_kernel)
    return MultiScaleVQTokenizer(encoder=partial(LDMEncoder, **sizes), decoder=partial(LDMDecoder, **sizes),
                                 factor=2 ** (len(channel_mult) - 1), embedding_dim=embedding_dim, **fields)
