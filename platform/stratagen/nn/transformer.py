"""Transformer blocks: pre-norm (with optional cross-attention), adaptive-layer-norm (VAR) and
BERT's post-norm."""

from typing import Callable, Type

from timm.layers import Mlp
from torch import Tensor, nn

from stratagen.nn.attention import Attention, KVCache


class TransformerBlock(nn.Module):
    """Pre-norm transformer block on tokens [B,N,dim] (bidirectional unless given a mask).

    x = x + attn(norm1(x))
    x = x + mlp(norm2(x))
    x = x + xattn(norm_x(x), context)     # only when context_dim is given,
    x = x + mlp_x(norm_x2(x))             # each attention followed by its own FFN

    With ``context_dim`` a layer is a self-attention block and a cross-attention block,
    each with its FFN: the layout that gives StraIT's bottom transformer its 292M
    parameters (§4.1: 16 layers, width 768, FFN 4096). ``dropout`` applies to the
    attention probabilities, the attention output projections and the MLPs; ``eps`` is the
    layer norms' and ``activation`` the MLPs' (CLIP's text tower: 1e-5 and QuickGELU).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        dropout: float = 0.0,
        context_dim: int | None = None,
        eps: float = 1e-6,
        activation: Type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, attn_dropout=dropout, proj_dropout=dropout)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, hidden_features=mlp_dim, act_layer=activation, drop=dropout)
        if context_dim is None:
            self.norm_x = self.xattn = self.norm_x2 = self.mlp_x = None
        else:
            self.norm_x = nn.LayerNorm(dim, eps=eps)
            self.xattn = Attention(
                dim, num_heads, context_dim=context_dim, attn_dropout=dropout, proj_dropout=dropout
            )
            self.norm_x2 = nn.LayerNorm(dim, eps=eps)
            self.mlp_x = Mlp(dim, hidden_features=mlp_dim, act_layer=activation, drop=dropout)

    def project_context(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys/values of ``context`` [B,M,context_dim], for reuse via ``context_kv``."""
        if self.xattn is None:
            raise ValueError("this block has no cross-attention (built with context_dim=None)")
        return self.xattn.project_kv(context)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        context_kv: tuple[Tensor, Tensor] | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """x: [B,N,dim] -> [B,N,dim]. Blocks with cross-attention need ``context`` or ``context_kv``;
        ``mask`` [N,N] bool (True: may attend) restricts the self-attention (e.g. causal)."""
        x = x + self.attn(self.norm1(x), mask=mask)
        x = x + self.mlp(self.norm2(x))
        if self.xattn is not None:
            x = x + self.xattn(self.norm_x(x), context=context, kv=context_kv)
            x = x + self.mlp_x(self.norm_x2(x))
        elif context is not None or context_kv is not None:
            raise ValueError("this block has no cross-attention (built with context_dim=None)")
        return x


class PostNormBlock(nn.Module):
    """BERT's post-norm self-attention block on tokens [B,N,dim] (official MaskGIT transformer).

    x = norm1(x + attn(x))
    x = norm2(x + mlp(x))        # mlp: dense, GELU (tanh approximation, flax's default), dense
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, dropout: float = 0.0, eps: float = 1e-12) -> None:
        super().__init__()
        self.attn = Attention(dim, num_heads, attn_dropout=dropout, proj_dropout=dropout)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, hidden_features=mlp_dim, act_layer=lambda: nn.GELU(approximate="tanh"), drop=dropout)
        self.norm2 = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B,N,dim] -> [B,N,dim]."""
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


class AdaLNBlock(nn.Module):
    """VAR's transformer block: self-attention and FFN under adaptive layer norm (VAR §3.2, the
    class-conditional AdaLN of its ``AdaLNSelfAttn``), optionally with STAR's cross-attention.

    A condition ``cond`` [B,cond_dim] gives six vectors per block (SiLU, linear):
    gamma1, gamma2, scale1, scale2, shift1, shift2, and

    x = x + gamma1 * attn(norm(x) * (1 + scale1) + shift1)      # norms without affine weights
    x = x + xattn(norm_x(x), text)                              # only with context_dim (STAR)
    x = x + gamma2 * mlp(norm(x) * (1 + scale2) + shift2)       # mlp: dim -> mlp_dim -> dim, GELU (tanh)

    At width C and FFN 4C a block holds about 18 C^2 weights (4 attention, 8 FFN, 6 AdaLN),
    which is what puts VAR-d16 at 310M parameters. ``qk_norm`` and ``key_bias`` go to the
    self-attention (:class:`Attention`; VAR's official attention: ``qk_norm=True, key_bias=False``).
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, cond_dim: int, dropout: float = 0.0,
                 context_dim: int | None = None, qk_norm: bool = False, key_bias: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.attn = Attention(dim, num_heads, attn_dropout=dropout, proj_dropout=dropout, qk_norm=qk_norm,
                              key_bias=key_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.mlp = Mlp(dim, hidden_features=mlp_dim, act_layer=lambda: nn.GELU(approximate="tanh"), drop=dropout)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim))
        if context_dim is None:
            self.norm_x = self.xattn = None
        else:
            self.norm_x = nn.LayerNorm(dim, eps=1e-6)
            self.xattn = Attention(dim, num_heads, context_dim=context_dim, attn_dropout=dropout,
                                   proj_dropout=dropout)

    def project_context(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys/values of ``context`` [B,M,context_dim], for reuse via ``context_kv``."""
        if self.xattn is None:
            raise ValueError("this block has no cross-attention (built with context_dim=None)")
        return self.xattn.project_kv(context)

    def forward(self, x: Tensor, cond: Tensor, mask: Tensor | None = None, cache: KVCache | None = None,
                rotary: Callable[[Tensor], Tensor] | None = None,
                context_kv: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """x: [B,N,dim], cond: [B,cond_dim] -> [B,N,dim]; ``mask``, ``cache``, ``rotary`` go to the
        self-attention (see :meth:`Attention.forward`), ``context_kv`` to the cross-attention."""
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.ada(cond)[:, None].chunk(6, dim=-1)
        x = x + gamma1 * self.attn(self.norm1(x) * (1 + scale1) + shift1, mask=mask, cache=cache, rotary=rotary)
        if self.xattn is not None:
            x = x + self.xattn(self.norm_x(x), kv=context_kv)
        elif context_kv is not None:
            raise ValueError("this block has no cross-attention (built with context_dim=None)")
        return x + gamma2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)
