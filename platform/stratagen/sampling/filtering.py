"""Token sampling from logits: classifier-free guidance, top-k / top-p filtering, temperature.

Shared by MaskGIT-style iterative decoding and VAR's next-scale sampling (VAR §3.2 samples
each scale with top-k and top-p; STAR slides, "AR sampling").
"""
from __future__ import annotations

import torch


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``cond + scale * (cond - uncond)`` (VAR writes it (1+s) cond - s uncond)."""
    return cond + scale * (cond - uncond)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """``logits`` ``[..., V]`` with every token outside the top ``k`` (0: no limit) and outside the
    smallest set whose probability reaches ``top_p`` (1: no limit) set to -inf. The most likely
    token always stays."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        outside = probs.cumsum(-1) - probs >= top_p  # the better tokens already reach top_p
        drop = torch.empty_like(outside).scatter(-1, order, outside)
        logits = logits.masked_fill(drop, -torch.inf)
    return logits


def sampling_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Probabilities ``[..., V]`` to draw tokens from: softmax of the filtered logits / temperature."""
    return torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
