"""Vector quantisation with a straight-through estimator (VQ-VAE / VQGAN)."""

from dataclasses import dataclass

import torch
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


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook lookup for latents [B,dim,H,W].

    loss = ||sg[z] - q||^2 + commitment_cost * ||z - sg[q]||^2 (means).

    With ``restart_dead_codes`` (training only), a code unused for
    ``dead_code_steps`` consecutive forward calls is replaced by an encoder
    output drawn at random from the current batch. The draw uses the global
    torch RNG of each process, so under DDP the owner must broadcast the
    codebook afterwards to keep replicas identical.
    """

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        commitment_cost: float = 0.25,
        restart_dead_codes: bool = False,
        dead_code_steps: int = 100,
    ) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.dim = dim
        self.commitment_cost = commitment_cost
        self.restart_dead_codes = restart_dead_codes
        self.dead_code_steps = dead_code_steps
        self.codebook = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        if restart_dead_codes:
            self.register_buffer("steps_since_use", torch.zeros(codebook_size, dtype=torch.long))

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantise encoder outputs z [B,dim,H,W]; see :class:`QuantizerOutput`."""
        B, D, H, W = z.shape
        flat = z.float().permute(0, 2, 3, 1).reshape(-1, D)
        indices = self._nearest(flat)
        q = self.codebook(indices)
        loss = F.mse_loss(q, flat.detach()) + self.commitment_cost * F.mse_loss(flat, q.detach())
        z_q = flat + (q - flat).detach()
        z_q = z_q.view(B, H, W, D).permute(0, 3, 1, 2).to(z.dtype)

        counts = _code_counts(indices, self.codebook_size)
        perplexity, usage = _stats_from_counts(counts)
        if self.restart_dead_codes and self.training:
            self._restart_dead_codes(counts, flat.detach())
        return QuantizerOutput(z_q, indices.view(B, H, W), loss, perplexity, usage)

    def lookup(self, indices: Tensor) -> Tensor:
        """Codebook vectors of ``indices`` [B,H,W] -> [B,dim,H,W]."""
        return self.codebook(indices).permute(0, 3, 1, 2)

    @torch.no_grad()
    def _nearest(self, flat: Tensor) -> Tensor:
        """Index of the closest code for each row of ``flat`` [N,dim] -> [N]."""
        with torch.autocast(device_type=flat.device.type, enabled=False):
            codes = self.codebook.weight.float()
            distances = (
                flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codes.t() + codes.pow(2).sum(1)
            )
        return distances.argmin(1)

    @torch.no_grad()
    def _restart_dead_codes(self, counts: Tensor, flat: Tensor) -> None:
        """Reset codes unused for ``dead_code_steps`` calls to random rows of ``flat`` [N,dim]."""
        self.steps_since_use.add_(1).masked_fill_(counts > 0, 0)
        dead = self.steps_since_use >= self.dead_code_steps
        # Drawing a candidate for every code avoids a host sync on the number of dead codes.
        candidates = flat[torch.randint(0, flat.shape[0], (self.codebook_size,), device=flat.device)]
        weight = self.codebook.weight
        weight.copy_(torch.where(dead[:, None], candidates.to(weight.dtype), weight))
        self.steps_since_use.masked_fill_(dead, 0)
