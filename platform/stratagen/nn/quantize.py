"""Vector quantisation with a straight-through estimator (VQ-VAE / VQGAN)."""

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class QuantizerOutput:
    """Result of :class:`VectorQuantizer`.

    z_q: [B,dim,H,W] quantised latents; the gradient passes straight through to z.
    indices: [B,H,W] int64 code indices.
    loss: scalar, codebook loss + commitment_cost * commitment loss.
    perplexity: scalar, exp(entropy) of this batch's code histogram.
    usage: scalar, fraction of the codebook used in this batch.
    """

    z_q: Tensor
    indices: Tensor
    loss: Tensor
    perplexity: Tensor
    usage: Tensor


def _code_counts(indices: Tensor, codebook_size: int) -> Tensor:
    """How many times each code occurs in ``indices`` (values in [0, K)): [K] int64."""
    flat = indices.flatten().long()
    counts = torch.zeros(codebook_size, dtype=torch.long, device=flat.device)
    return counts.scatter_add_(0, flat, torch.ones_like(flat))


def _stats_from_counts(counts: Tensor) -> tuple[Tensor, Tensor]:
    """(perplexity, usage) scalar tensors of a code histogram [K].

    perplexity = exp(-sum p log p) = 2^(-sum p log2 p) (StraIT Eq. 5), which
    is K for a uniform histogram and 1 when a single code is used.
    """
    p = counts.double() / counts.sum()
    perplexity = torch.exp(-torch.xlogy(p, p).sum()).float()
    usage = (counts > 0).float().mean()
    return perplexity, usage


def codebook_stats(indices: Tensor, codebook_size: int) -> tuple[float, float]:
    """(perplexity, usage fraction) of the codes in an integer tensor of any shape."""
    if indices.numel() == 0:
        raise ValueError("codebook_stats needs at least one index")
    if indices.min() < 0 or indices.max() >= codebook_size:
        raise ValueError(f"indices must lie in [0, {codebook_size})")
    perplexity, usage = _stats_from_counts(_code_counts(indices, codebook_size))
    return perplexity.item(), usage.item()


def entropy_loss(affinity: Tensor, temperature: float) -> Tensor:
    """MaskGIT's codebook entropy loss (official ``libml/losses.py``, softmax type).

    ``affinity`` [N, K] (negative squared distances to the codes) / temperature gives
    per-position code probabilities p_n; the loss is mean_n H(p_n) - H(mean_n p_n):
    confident assignments (low per-position entropy) spread over the whole codebook
    (high entropy of the average). The 1e-5 inside the log is the official one.
    """
    logits = affinity / temperature
    probs = logits.softmax(-1)
    sample_entropy = -(probs * logits.log_softmax(-1)).sum(-1).mean()
    avg_probs = probs.mean(0)
    avg_entropy = -(avg_probs * torch.log(avg_probs + 1e-5)).sum()
    return sample_entropy - avg_entropy


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook lookup for latents [B,dim,H,W].

    loss = ||sg[z] - q||^2 + commitment_cost * ||z - sg[q]||^2 (means)
    + entropy_loss_weight * :func:`entropy_loss` (MaskGIT; 0 turns it off).

    ViT-VQGAN codes (Yu et al. 2022, §3.2), both optional:

    - ``code_dim``: factorized codes. Latents are projected (linear) from ``dim`` to
      ``code_dim`` for the lookup, and the chosen codes back to ``dim``.
    - ``l2_normalize``: latents and codes are l2-normalized before the lookup, so the
      nearest code is the one of highest cosine similarity, and z_q is the unit code.

    With ``restart_dead_codes`` (training only), a code unused for
    ``dead_code_steps`` consecutive forward calls is replaced by an encoder
    output drawn at random from the current batch. Under torch.distributed the
    code counts are summed over the processes (a code is dead when no process
    used it) and the replacements are process 0's draw, so codebooks and usage
    counters stay identical on every process.
    """

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        commitment_cost: float = 0.25,
        restart_dead_codes: bool = False,
        dead_code_steps: int = 100,
        code_dim: int | None = None,
        l2_normalize: bool = False,
        entropy_loss_weight: float = 0.0,
        entropy_temperature: float = 0.01,
    ) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.dim = dim
        self.code_dim = code_dim or dim
        self.commitment_cost = commitment_cost
        self.restart_dead_codes = restart_dead_codes
        self.dead_code_steps = dead_code_steps
        self.l2_normalize = l2_normalize
        self.entropy_loss_weight = entropy_loss_weight
        self.entropy_temperature = entropy_temperature
        self.project_in = nn.Linear(dim, code_dim) if code_dim else None
        self.project_out = nn.Linear(code_dim, dim) if code_dim else None
        self.codebook = nn.Embedding(codebook_size, self.code_dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        if restart_dead_codes:
            self.register_buffer("steps_since_use", torch.zeros(codebook_size, dtype=torch.long))

    def codes(self) -> Tensor:
        """The lookup table [K, code_dim] (unit rows with ``l2_normalize``)."""
        # A copy: restarting dead codes rewrites the weight in place while autograd may still
        # hold what the distances were computed from.
        weight = self.codebook.weight.float().clone()
        return F.normalize(weight, dim=1) if self.l2_normalize else weight

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantise encoder outputs z [B,dim,H,W]; see :class:`QuantizerOutput`."""
        B, _, H, W = z.shape
        flat = z.float().permute(0, 2, 3, 1).reshape(B * H * W, self.dim)
        if self.project_in is not None:
            flat = self.project_in(flat)
        if self.l2_normalize:
            flat = F.normalize(flat, dim=1)
        codes = self.codes()
        with torch.autocast(device_type=flat.device.type, enabled=False), \
                torch.set_grad_enabled(torch.is_grad_enabled() and self.entropy_loss_weight > 0):
            distances = _squared_distances(flat, codes)
        indices = distances.argmin(1)
        q = F.embedding(indices, codes)
        loss = F.mse_loss(q, flat.detach()) + self.commitment_cost * F.mse_loss(flat, q.detach())
        if self.entropy_loss_weight > 0:
            loss = loss + self.entropy_loss_weight * entropy_loss(-distances, self.entropy_temperature)
        z_q = flat + (q - flat).detach()
        if self.project_out is not None:
            z_q = self.project_out(z_q)
        z_q = z_q.view(B, H, W, self.dim).permute(0, 3, 1, 2).to(z.dtype)

        counts = _code_counts(indices, self.codebook_size)
        perplexity, usage = _stats_from_counts(counts)
        if self.restart_dead_codes and self.training:
            self._restart_dead_codes(counts, flat.detach())
        return QuantizerOutput(z_q, indices.view(B, H, W), loss, perplexity, usage)

    def lookup(self, indices: Tensor) -> Tensor:
        """Codebook vectors of ``indices`` [B,H,W] -> [B,dim,H,W] (what the decoder receives).

        Float ``indices`` [B,H,W,K] are weights over the codebook: each position gets the weighted
        sum of the codes (a soft code, e.g. VAR's ``more_smooth`` blends).
        """
        codes = self.codes()
        q = indices.to(codes.dtype) @ codes if indices.is_floating_point() else F.embedding(indices, codes)
        if self.project_out is not None:
            q = self.project_out(q)
        return q.permute(0, 3, 1, 2)

    @torch.no_grad()
    def _restart_dead_codes(self, counts: Tensor, flat: Tensor) -> None:
        """Reset codes unused for ``dead_code_steps`` calls to random rows of ``flat`` [N,code_dim]."""
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if distributed:
            counts = counts.clone()
            dist.all_reduce(counts)
        self.steps_since_use.add_(1).masked_fill_(counts > 0, 0)
        dead = self.steps_since_use >= self.dead_code_steps
        # Drawing a candidate for every code avoids a host sync on the number of dead codes.
        candidates = flat[torch.randint(0, flat.shape[0], (self.codebook_size,), device=flat.device)].contiguous()
        if distributed:
            dist.broadcast(candidates, src=0)
        weight = self.codebook.weight
        weight.copy_(torch.where(dead[:, None], candidates.to(weight.dtype), weight))
        self.steps_since_use.masked_fill_(dead, 0)


def _squared_distances(flat: Tensor, codes: Tensor) -> Tensor:
    """||flat_n - codes_k||^2 for ``flat`` [N,D] and ``codes`` [K,D] -> [N,K]."""
    return flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codes.t() + codes.pow(2).sum(1)
