"""Pre-norm transformer block with optional cross-attention."""

from timm.layers import Mlp
from torch import Tensor, nn

from stratagen.nn.attention import Attention


class TransformerBlock(nn.Module):
    """Bidirectional transformer block on tokens [B,N,dim].

    x = x + attn(norm1(x))
    x = x + xattn(norm_x(x), context)     # only when context_dim is given
    x = x + mlp(norm2(x))

    ``dropout`` applies to the attention probabilities, the attention output
    projections and the MLP.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        dropout: float = 0.0,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attn_dropout=dropout, proj_dropout=dropout)
        if context_dim is None:
            self.norm_x = None
            self.xattn = None
        else:
            self.norm_x = nn.LayerNorm(dim, eps=1e-6)
            self.xattn = Attention(
                dim, num_heads, context_dim=context_dim, attn_dropout=dropout, proj_dropout=dropout
            )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden_features=mlp_dim, act_layer=nn.GELU, drop=dropout)

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
    ) -> Tensor:
        """x: [B,N,dim] -> [B,N,dim]. Blocks with cross-attention need ``context`` or ``context_kv``."""
        x = x + self.attn(self.norm1(x))
        if self.xattn is not None:
            x = x + self.xattn(self.norm_x(x), context=context, kv=context_kv)
        elif context is not None or context_kv is not None:
            raise ValueError("this block has no cross-attention (built with context_dim=None)")
        return x + self.mlp(self.norm2(x))
