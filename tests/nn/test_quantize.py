import math

import pytest
import torch

from stratagen.nn import VectorQuantizer, codebook_stats


def fixed_quantizer(codes: list[list[float]], **kwargs) -> VectorQuantizer:
    vq = VectorQuantizer(codebook_size=len(codes), dim=len(codes[0]), **kwargs)
    with torch.no_grad():
        vq.codebook.weight.copy_(torch.tensor(codes))
    return vq


def to_bdhw(vectors: list[list[float]]) -> torch.Tensor:
    """N vectors of size D -> latents [1, D, 1, N]."""
    return torch.tensor(vectors).T[None, :, None, :].contiguous()


def test_codebook_init_range():
    vq = VectorQuantizer(codebook_size=64, dim=8)
    assert vq.codebook.weight.abs().max() <= 1 / 64


def test_indices_are_argmin_of_distances():
    torch.manual_seed(0)
    vq = VectorQuantizer(codebook_size=16, dim=4)
    vq.codebook.weight.data.normal_()
    z = torch.randn(2, 4, 3, 5)
    out = vq(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    expected = torch.cdist(flat, vq.codebook.weight).argmin(1).view(2, 3, 5)
    assert out.indices.dtype == torch.long
    assert torch.equal(out.indices, expected)
    torch.testing.assert_close(out.z_q, vq.lookup(out.indices).detach())


def test_loss_and_gradients_match_hand_computation():
    beta = 0.25
    vq = fixed_quantizer([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], commitment_cost=beta)
    z = to_bdhw([[0.2, 0.1], [0.9, 0.3]]).requires_grad_()
    out = vq(z)
    assert out.indices.flatten().tolist() == [0, 1]

    # z - q = (0.2, 0.1) and (-0.1, 0.3): mean square 0.15 / 4 over both terms.
    assert out.loss.item() == pytest.approx((1 + beta) * 0.15 / 4)

    out.loss.backward()
    # d/dq mean((q - z)^2) = 2 (q - z) / 4 lands on the codebook, beta times its negation on z.
    expected_codebook_grad = torch.tensor([[-0.1, -0.05], [0.05, -0.15], [0.0, 0.0]])
    torch.testing.assert_close(vq.codebook.weight.grad, expected_codebook_grad)
    torch.testing.assert_close(z.grad, beta * to_bdhw([[0.1, 0.05], [-0.05, 0.15]]))


def test_straight_through_gradient():
    torch.manual_seed(0)
    vq = VectorQuantizer(codebook_size=8, dim=3)
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    upstream = torch.randn(2, 3, 4, 4)
    out = vq(z)
    (out.z_q * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)
    assert vq.codebook.weight.grad is None


def test_codebook_stats_values():
    assert codebook_stats(torch.arange(8).repeat(3), 8) == pytest.approx((8.0, 1.0))
    assert codebook_stats(torch.zeros(2, 5, 5, dtype=torch.long), 8) == pytest.approx((1.0, 1 / 8))
    # p = (1/2, 1/4, 1/4): 1.5 bits of entropy, 3 of 16 codes used.
    perplexity, usage = codebook_stats(torch.tensor([4, 4, 7, 9], dtype=torch.int32), 16)
    assert perplexity == pytest.approx(2**1.5)
    assert usage == 3 / 16


def test_codebook_stats_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        codebook_stats(torch.tensor([0, 4]), 4)


def test_quantizer_reports_batch_stats():
    vq = fixed_quantizer([[0.0], [1.0], [2.0], [3.0]])
    out = vq(to_bdhw([[0.1], [1.1], [0.9], [2.2]]))
    assert out.indices.flatten().tolist() == [0, 1, 1, 2]
    assert out.perplexity.item() == pytest.approx(2**1.5)
    assert out.usage.item() == 3 / 4


def dead_code_setup(**kwargs) -> tuple[VectorQuantizer, torch.Tensor]:
    # Codes 2 and 3 are far from every input, so they are never selected.
    vq = fixed_quantizer([[0.0, 0.0], [1.0, 1.0], [50.0, 50.0], [-50.0, -50.0]], **kwargs)
    z = to_bdhw([[0.1, 0.0], [0.9, 1.2], [0.2, -0.1], [1.1, 0.8], [0.0, 0.3]])
    return vq, z


def test_dead_codes_restart_from_encoder_outputs():
    torch.manual_seed(0)
    vq, z = dead_code_setup(restart_dead_codes=True, dead_code_steps=3)
    initial = vq.codebook.weight.detach().clone()
    for _ in range(2):
        vq(z)
    assert torch.equal(vq.codebook.weight, initial)
    assert vq.steps_since_use.tolist() == [0, 0, 2, 2]

    out = vq(z.clone().requires_grad_())
    out.loss.backward()  # the in-place restart must not break autograd
    weight = vq.codebook.weight.detach()
    assert torch.equal(weight[:2], initial[:2])
    encoder_outputs = z[0, :, 0, :].T
    for code in weight[2:]:
        assert (encoder_outputs == code).all(1).any()
    assert vq.steps_since_use.tolist() == [0, 0, 0, 0]


def test_no_restart_in_eval_mode():
    vq, z = dead_code_setup(restart_dead_codes=True, dead_code_steps=1)
    initial = vq.codebook.weight.detach().clone()
    vq.eval()
    vq(z)
    assert torch.equal(vq.codebook.weight, initial)


def test_restart_disabled_changes_nothing():
    vq, z = dead_code_setup(dead_code_steps=1)
    initial = vq.codebook.weight.detach().clone()
    assert "steps_since_use" not in vq.state_dict()
    rng = torch.get_rng_state()
    for _ in range(3):
        out = vq(z)
    assert torch.equal(vq.codebook.weight, initial)
    assert torch.equal(torch.get_rng_state(), rng)
    assert out.usage.item() == 0.5
    assert math.isfinite(out.loss.item())


def test_l2_normalized_factorized_lookup_is_the_brute_force_cosine_nearest():
    torch.manual_seed(0)
    vq = VectorQuantizer(codebook_size=16, dim=6, code_dim=3, l2_normalize=True)
    vq.codebook.weight.data.normal_()
    z = torch.randn(2, 6, 3, 4)
    out = vq(z)
    projected = vq.project_in(z.permute(0, 2, 3, 1).reshape(-1, 6))
    cosine = torch.nn.functional.cosine_similarity(projected[:, None], vq.codebook.weight[None], dim=-1)
    assert torch.equal(out.indices.flatten(), cosine.argmax(1))
    # z_q is the unit-norm code projected back to dim, the same as the decoder's lookup
    unit = vq.codebook.weight[out.indices.flatten()] / vq.codebook.weight[out.indices.flatten()].norm(dim=1,
                                                                                                       keepdim=True)
    expected = vq.project_out(unit).view(2, 3, 4, 6).permute(0, 3, 1, 2)
    torch.testing.assert_close(out.z_q, expected)
    torch.testing.assert_close(vq.lookup(out.indices), expected)


def test_l2_normalized_codes_ignore_the_scale_of_latents_and_codes():
    # Euclidean nearest of (10, 1) is (1, 0); the cosine nearest is (5, 1), whatever its norm.
    codes = [[1.0, 0.0], [5.0, 1.0]]
    assert fixed_quantizer(codes)(to_bdhw([[1.2, 0.1]])).indices.item() == 0
    assert fixed_quantizer(codes, l2_normalize=True)(to_bdhw([[10.0, 2.1]])).indices.item() == 1


def test_entropy_loss_on_a_hand_made_case():
    from stratagen.nn.quantize import entropy_loss

    # Two positions, two codes, temperature 1: p_1 = softmax(0, log 3) = (1/4, 3/4), p_2 = (3/4, 1/4).
    affinity = torch.log(torch.tensor([[1.0, 3.0], [3.0, 1.0]]))
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    avg = -2 * 0.5 * math.log(0.5 + 1e-5)
    assert entropy_loss(affinity, 1.0).item() == pytest.approx(h - avg, abs=1e-6)
    # confident and spread (one code each) beats confident and collapsed (both on one code)
    spread = torch.tensor([[0.0, -100.0], [-100.0, 0.0]])
    collapsed = torch.tensor([[0.0, -100.0], [0.0, -100.0]])
    assert entropy_loss(spread, 1.0) < entropy_loss(collapsed, 1.0)
    assert entropy_loss(spread, 1.0).item() == pytest.approx(-math.log(2), abs=1e-4)


def test_entropy_loss_weight_adds_to_the_quantizer_loss():
    torch.manual_seed(0)
    z = torch.randn(2, 4, 3, 3)
    plain = VectorQuantizer(16, 4)
    weighted = VectorQuantizer(16, 4, entropy_loss_weight=0.1, entropy_temperature=0.5)
    weighted.load_state_dict(plain.state_dict())
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    from stratagen.nn.quantize import entropy_loss

    expected = 0.1 * entropy_loss(-torch.cdist(flat, plain.codebook.weight).pow(2), 0.5)
    torch.testing.assert_close(weighted(z).loss - plain(z).loss, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("options", [{}, {"entropy_loss_weight": 0.1, "l2_normalize": True}])
def test_restarting_codes_in_training_keeps_the_graph_usable(options):
    # A shared codebook quantizes twice (VQGAN2's two levels): the first call's restart rewrites
    # the weight in place, and the backward through both calls must still work.
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 3, restart_dead_codes=True, dead_code_steps=1, **options).train()
    z = torch.randn(2, 3, 2, 2, requires_grad=True)
    (vq(z).loss + vq(z * 2).loss).backward()
    assert z.grad.abs().sum() > 0
