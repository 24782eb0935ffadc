"""Building blocks of masked-token models: the iterative decoding loop, the staged sampler, and
the schedule-drawn training masks, and token sampling (guidance, top-k / top-p).

Plugins build their samplers from these (MaskGIT, StraIT's stratified, cascade and
upsample samplers, third-party samplers); what a sampler must offer is in the contract,
:class:`stratagen.registry.Sampler`.
"""
from stratagen.sampling.decode import (DecodeResult, annealed_gumbel, count_plan, guided_logits, iterative_decode,
                                      masked_counts, sample_tokens)
from stratagen.sampling.filtering import filter_logits, guide, sampling_probs
from stratagen.sampling.masking import schedule_mask
from stratagen.sampling.staged import StagedSampler

__all__ = ["DecodeResult", "StagedSampler", "annealed_gumbel", "count_plan", "filter_logits", "guide", "guided_logits",
           "iterative_decode", "masked_counts", "sample_tokens", "sampling_probs", "schedule_mask"]
