"""Multi-head attention, the single attention implementation of stratagen.

Self-attention optionally takes a boolean mask (VAR's block-causal attention), a
:class:`KVCache` (keys and values of earlier calls, so an autoregressive model runs each
new block of queries once) and a rotary position embedding applied to queries and keys
(STAR's normalized 2D RoPE, :mod:`stratagen.nn.rope`).

The kernel is ``torch.nn.functional.scaled_dot_product_attention`` ("sdpa",
the default) or xformers' ``memory_efficient_attention`` ("xformers"),
chosen process-wide with :func:`set_attention_backend`. xformers has no CPU
kernels, so with the "xformers" backend CPU tensors still go through SDPA.
"""

import importlib
import math
from types import ModuleType
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_BACKENDS = ("sdpa", "xformers")
_backend = "sdpa"
_xformers_ops: ModuleType | None = None
#: VAR's cap on the learned per-head logit scale of ``qk_norm`` attention: scale <= 100
_LOG_MAX_SCALE = math.log(100.0)


def set_attention_backend(name: str) -> None:
    """Select the attention kernel: "sdpa" (default) or "xformers".

    "xformers" is used for CUDA tensors only; CPU tensors still go through SDPA.
    """
    global _backend, _xformers_ops
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; expected one of {_BACKENDS}")
    if name == "xformers" and _xformers_ops is None:
        try:
            _xformers_ops = importlib.import_module("xformers.ops")
        except ImportError as e:
            raise ValueError(
                "attention backend 'xformers' needs the xformers package, which is not importable; "
                "install it or use 'sdpa'"
            ) from e
    _backend = name


def get_attention_backend() -> str:
    """Name of the attention kernel currently selected."""
    return _backend


def _attend(q: Tensor, k: Tensor, v: Tensor, dropout_p: float, mask: Tensor | None = None,
            scale: float | None = None) -> Tensor:
    """softmax(scale q k^T) v, scale 1/sqrt(d) unless given. q: [B,H,N,D], k/v: [B,H,M,D] -> [B,H,N,D].

    ``mask`` [N,M] bool (True: may attend) goes to SDPA; masked calls never use xformers.
    """
    if _backend == "xformers" and q.is_cuda and mask is None:
        # xformers expects [B, seq, heads, head_dim].
        out = _xformers_ops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), p=dropout_p, scale=scale
        )
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


class KVCache:
    """Keys and values a self-attention layer has seen so far, each [B,heads,M,head_dim].

    Each call of :meth:`Attention.forward` with this cache appends its keys and values and
    attends over everything cached, so an autoregressive model feeds only its new tokens.
    """

    def __init__(self) -> None:
        self.keys: Tensor | None = None
        self.values: Tensor | None = None

    def extend(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``keys``/``values`` [B,heads,N,head_dim]; returns all cached, [B,heads,M+N,head_dim]."""
        if self.keys is not None:
            keys, values = torch.cat([self.keys, keys], dim=2), torch.cat([self.values, values], dim=2)
        self.keys, self.values = keys, values
        return keys, values

    @property
    def length(self) -> int:
        """Number of cached positions M."""
        return 0 if self.keys is None else self.keys.shape[2]


class Attention(nn.Module):
    """Bidirectional multi-head self- or cross-attention (no mask).

    Self-attention when ``context_dim`` is None, otherwise queries come from
    ``x`` [B,N,dim] and keys/values from a context [B,M,context_dim]. Keys and
    values have their own projection so that, for a fixed context, they can be
    computed once with :meth:`project_kv` and reused across forward calls.

    Two options of VAR's attention (its ``SelfAttention`` with ``attn_l2_norm``):

    - ``qk_norm``: queries and keys are L2-normalised per head and the logits are
      ``exp(min(s_h, log 100)) * q_hat . k_hat`` with a learned per-head log-scale ``s_h``
      (``log_scale`` [1,heads,1,1], initialised to log 4), instead of ``q . k / sqrt(d)``:
      cosine attention whose temperature each head learns, capped at 100.
    - ``key_bias=False``: with ``qkv_bias``, queries and values have biases but keys do not
      (a key bias only shifts every logit of a query by the same amount).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        context_dim: int | None = None,
        qkv_bias: bool = True,
        attn_dropout: float = 0.0,
        proj_dropout: float = 0.0,
        qk_norm: bool = False,
        key_bias: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.is_cross = context_dim is not None
        self.attn_dropout = attn_dropout
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim if context_dim is None else context_dim, 2 * dim, bias=qkv_bias and key_bias)
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias and not key_bias else None
        self.log_scale = nn.Parameter(torch.full((1, num_heads, 1, 1), math.log(4.0))) if qk_norm else None
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_dropout)

    def project_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of ``context`` [B,M,C], each [B,heads,M,head_dim] (keys unit-norm with ``qk_norm``)."""
        B, M, _ = context.shape
        kv = self.kv(context)
        if self.v_bias is not None:
            kv = kv + torch.cat([torch.zeros_like(self.v_bias), self.v_bias])
        k, v = kv.view(B, M, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return (k if self.log_scale is None else F.normalize(k, dim=-1)), v

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        kv: tuple[Tensor, Tensor] | None = None,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        rotary: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """x: [B,N,dim] -> [B,N,dim].

        Cross-attention takes exactly one of ``context`` [B,M,context_dim] or
        ``kv`` (the output of :meth:`project_kv`); self-attention takes neither, and may take
        ``mask`` [N,M] bool (True: may attend; M counts cached positions too), ``cache``
        (its keys and values are appended, and the queries attend over all of them) and
        ``rotary`` (maps queries and keys [B,heads,N,head_dim] of these N positions to
        their rotated versions; cached keys are stored rotated).
        """
        if self.is_cross and (context is None) == (kv is None):
            raise ValueError("cross-attention needs exactly one of `context` or `kv`")
        if not self.is_cross and (context is not None or kv is not None):
            raise ValueError("self-attention takes neither `context` nor `kv`")
        if self.is_cross and (mask is not None or cache is not None or rotary is not None):
            raise ValueError("mask, cache and rotary apply to self-attention only")
        B, N, C = x.shape
        q = self.q(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = kv if kv is not None else self.project_kv(x if context is None else context)
        if rotary is not None:
            q, k = rotary(q), rotary(k)
        scale = None
        if self.log_scale is not None:  # keys are normalised in project_kv
            q, scale = F.normalize(q, dim=-1) * self.log_scale.clamp_max(_LOG_MAX_SCALE).exp(), 1.0
        if cache is not None:
            k, v = cache.extend(k, v)
        out = _attend(q, k, v, self.attn_dropout if self.training else 0.0, mask, scale)
        out = out.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(out))
