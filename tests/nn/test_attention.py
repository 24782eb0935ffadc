import importlib.util
import math

import pytest
import torch

import stratagen.nn.attention as attention_module
from stratagen.nn import Attention, TransformerBlock, get_attention_backend, set_attention_backend


def reference_attention(attn: Attention, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v written out with the module's own weights."""
    B, N, dim = x.shape
    H, d = attn.num_heads, attn.head_dim
    q = (x @ attn.q.weight.T + attn.q.bias).view(B, N, H, d).transpose(1, 2)
    k, v = (context @ attn.kv.weight.T + attn.kv.bias).chunk(2, dim=-1)
    k = k.view(B, -1, H, d).transpose(1, 2)
    v = v.view(B, -1, H, d).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(B, N, dim)
    return out @ attn.proj.weight.T + attn.proj.bias


def test_self_attention_matches_reference():
    torch.manual_seed(0)
    attn = Attention(dim=16, num_heads=4)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(attn(x), reference_attention(attn, x, x))


def test_cross_attention_matches_reference():
    torch.manual_seed(0)
    attn = Attention(dim=16, num_heads=2, context_dim=12)
    x, context = torch.randn(2, 5, 16), torch.randn(2, 7, 12)
    torch.testing.assert_close(attn(x, context=context), reference_attention(attn, x, context))


def test_cached_kv_equals_context():
    torch.manual_seed(0)
    attn = Attention(dim=16, num_heads=4, context_dim=8)
    x, context = torch.randn(3, 5, 16), torch.randn(3, 6, 8)
    k, v = attn.project_kv(context)
    assert k.shape == v.shape == (3, 4, 6, 4)
    assert torch.allclose(attn(x, kv=(k, v)), attn(x, context=context), atol=1e-6)


def test_attention_is_bidirectional():
    torch.manual_seed(0)
    attn = Attention(dim=8, num_heads=2)
    x = torch.randn(1, 4, 8)
    y = x.clone()
    y[:, -1] += 1.0
    assert not torch.allclose(attn(x)[:, 0], attn(y)[:, 0])


def test_dropout_only_in_training():
    torch.manual_seed(0)
    attn = Attention(dim=8, num_heads=2, attn_dropout=0.5, proj_dropout=0.5).eval()
    x = torch.randn(2, 6, 8)
    expected = attn(x)
    assert torch.equal(attn(x), expected)
    assert not torch.allclose(attn.train()(x), expected)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="divisible"):
        Attention(dim=10, num_heads=3)
    cross = Attention(dim=8, num_heads=2, context_dim=4)
    with pytest.raises(ValueError):
        cross(torch.randn(1, 2, 8))
    with pytest.raises(ValueError):
        Attention(dim=8, num_heads=2)(torch.randn(1, 2, 8), context=torch.randn(1, 2, 8))


def test_backend_selection():
    assert get_attention_backend() == "sdpa"
    with pytest.raises(ValueError, match="sdpa"):
        set_attention_backend("flash")
    assert get_attention_backend() == "sdpa"


@pytest.mark.skipif(importlib.util.find_spec("xformers") is not None, reason="xformers is installed")
def test_xformers_backend_unavailable_raises():
    with pytest.raises(ValueError, match="xformers.*sdpa"):
        set_attention_backend("xformers")
    assert get_attention_backend() == "sdpa"


def test_xformers_backend_falls_back_to_sdpa_on_cpu(monkeypatch):
    torch.manual_seed(0)
    attn = Attention(dim=16, num_heads=4)
    x = torch.randn(2, 5, 16)
    expected = attn(x)
    # With no xformers module at all, any attempt to use it on CPU would fail.
    monkeypatch.setattr(attention_module, "_backend", "xformers")
    monkeypatch.setattr(attention_module, "_xformers_ops", None)
    torch.testing.assert_close(attn(x), expected)


def block_params(dim: int, mlp_dim: int) -> int:
    attn = 4 * dim * dim + 4 * dim  # q, kv (2x), proj weights and biases
    mlp = 2 * dim * mlp_dim + mlp_dim + dim
    norms = 2 * 2 * dim
    return attn + mlp + norms


def test_block_parameter_count_is_standard():
    block = TransformerBlock(dim=32, num_heads=4, mlp_dim=80)
    assert sum(p.numel() for p in block.parameters()) == block_params(32, 80)
    # 48 blocks of the paper's 768-wide transformer: 491.3M of its 499M parameters.
    assert 48 * block_params(768, 5120) == 491_311_104


def test_cross_attention_block_has_two_ffns():
    # StraIT §4.1 bottom layer: self-attention + FFN, then cross-attention + FFN.
    block = TransformerBlock(dim=32, num_heads=4, mlp_dim=80, context_dim=32)
    assert sum(p.numel() for p in block.parameters()) == 2 * block_params(32, 80)
    # 16 such layers of width 768 / FFN 4096: 277.2M of the bottom transformer's 292M.
    assert 16 * 2 * block_params(768, 4096) == 277_176_320


def test_block_with_zeroed_outputs_is_identity():
    torch.manual_seed(0)
    block = TransformerBlock(dim=16, num_heads=4, mlp_dim=32, context_dim=8)
    for layer in (block.attn.proj, block.xattn.proj, block.mlp.fc2, block.mlp_x.fc2):
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    x = torch.randn(2, 5, 16)
    assert torch.equal(block(x, context=torch.randn(2, 3, 8)), x)


def test_block_cross_attention_uses_cached_context():
    torch.manual_seed(0)
    block = TransformerBlock(dim=16, num_heads=4, mlp_dim=32, context_dim=8)
    x, context = torch.randn(2, 5, 16), torch.randn(2, 3, 8)
    out = block(x, context=context)
    assert torch.allclose(block(x, context_kv=block.project_context(context)), out, atol=1e-6)
    assert not torch.allclose(block(x, context=context + 1.0), out)


def test_block_without_cross_attention_rejects_context():
    block = TransformerBlock(dim=16, num_heads=4, mlp_dim=32)
    assert block.xattn is None
    with pytest.raises(ValueError, match="cross-attention"):
        block.project_context(torch.randn(1, 3, 16))
    with pytest.raises(ValueError, match="cross-attention"):
        block(torch.randn(1, 2, 16), context=torch.randn(1, 3, 16))


def test_qk_norm_attention_is_cosine_attention_with_a_capped_learned_scale_per_head():
    """VAR's attn_l2_norm: softmax(min(exp(s_h), 100) * q_hat . k_hat) v, no 1/sqrt(d), no key bias."""
    torch.manual_seed(0)
    attn = Attention(dim=16, num_heads=2, qk_norm=True, key_bias=False)
    assert attn.kv.bias is None and attn.v_bias.shape == (16,)
    with torch.no_grad():
        attn.v_bias.normal_()
        attn.log_scale.copy_(torch.tensor([math.log(3.0), math.log(500.0)]).view(1, 2, 1, 1))
    x = torch.randn(2, 5, 16)
    B, N, H, d = 2, 5, 2, 8
    q = (x @ attn.q.weight.T + attn.q.bias).view(B, N, H, d).transpose(1, 2)
    k, v = (x @ attn.kv.weight.T).chunk(2, dim=-1)
    k, v = k.view(B, N, H, d).transpose(1, 2), (v + attn.v_bias).view(B, N, H, d).transpose(1, 2)
    cosine = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(k, dim=-1).transpose(-1, -2)
    scale = torch.tensor([3.0, 100.0]).view(1, 2, 1, 1)  # the second head's 500 is capped at 100
    out = (torch.softmax(scale * cosine, dim=-1) @ v).transpose(1, 2).reshape(B, N, 16)
    torch.testing.assert_close(attn(x), out @ attn.proj.weight.T + attn.proj.bias)
    # parameters: no key bias, one scale per head
    plain = Attention(dim=16, num_heads=2)
    assert sum(p.numel() for p in attn.parameters()) == sum(p.numel() for p in plain.parameters()) - 16 + 2
