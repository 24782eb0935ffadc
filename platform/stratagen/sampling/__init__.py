"""Building blocks of masked-token samplers: the iterative decoding loop and the staged sampler.

Plugins build their samplers from these (MaskGIT, StraIT's stratified, cascade and
upsample samplers, third-party samplers); what a sampler must offer is in the contract,
:class:`stratagen.registry.Sampler`.
"""
from stratagen.sampling.decode import DecodeResult, annealed_gumbel, guided_logits, iterative_decode, masked_counts
from stratagen.sampling.staged import StagedSampler

__all__ = ["DecodeResult", "StagedSampler", "annealed_gumbel", "guided_logits", "iterative_decode", "masked_counts"]
