"""MaskGIT iterative decoding: schedule arithmetic, known tokens, seeding, guidance."""
import pytest
import torch

from official_maskgit import official_trajectory
from stratagen.plugins.maskgit import MaskedTokenTransformer
from stratagen.registry import StageSettings
from stratagen.sampling import guided_logits, iterative_decode
from stratagen.registry import UNKNOWN, LevelSpec, get_registry


def tiny_prior(conditions=(), seed=0) -> MaskedTokenTransformer:
    torch.manual_seed(seed)
    prior = MaskedTokenTransformer(target=LevelSpec("tokens", 4, 4, 16), conditions=conditions, num_classes=3,
                                   depth=1, width=32, heads=2, mlp_dim=64, dropout=0.0)
    for p in prior.parameters():  # far from the near-uniform initial logits, so classes matter
        p.data.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed + p.numel()))
    return prior.eval()


@pytest.mark.parametrize("schedule,steps", [("cosine", 8), ("linear", 5), ("exp", 6), ("log", 4)])
def test_each_step_leaves_exactly_the_scheduled_number_masked(schedule, steps):
    prior = tiny_prior()
    canvas = torch.full((3, 16), UNKNOWN)
    result = iterative_decode(prior, canvas, torch.tensor([0, 1, 2]), [], StageSettings(steps=steps, schedule=schedule),
                              torch.Generator().manual_seed(0))
    want = official_trajectory(schedule, steps, 16)
    for step, masked in enumerate(result.masked_after_step):
        assert masked.tolist() == [want[step]] * 3, f"step {step}"
    assert (result.tokens >= 0).all() and (result.tokens < 16).all()


def test_known_tokens_are_kept_and_schedule_counts_from_unknown_at_start():
    prior = tiny_prior()
    canvas = torch.randint(0, 16, (2, 16), generator=torch.Generator().manual_seed(1))
    known = torch.zeros(2, 16, dtype=torch.bool)
    known[:, :6] = True
    canvas = torch.where(known, canvas, UNKNOWN)
    result = iterative_decode(prior, canvas, torch.tensor([0, 2]), [], StageSettings(steps=4),
                              torch.Generator().manual_seed(0))
    assert torch.equal(result.tokens[known], canvas[known])
    want = official_trajectory("cosine", 4, 10)
    assert [m.tolist() for m in result.masked_after_step] == [[w, w] for w in want]


def test_same_seed_same_tokens_other_seed_other_tokens():
    prior = tiny_prior()
    canvas = torch.full((4, 16), UNKNOWN)
    labels = torch.tensor([0, 1, 2, 0])
    run = lambda seed: iterative_decode(prior, canvas, labels, [], StageSettings(steps=5),
                                        torch.Generator().manual_seed(seed)).tokens
    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_guidance_scale_zero_equals_unguided_sampling():
    prior = tiny_prior()
    canvas = torch.full((2, 16), UNKNOWN)
    labels = torch.tensor([1, 2])
    plain = iterative_decode(prior, canvas, labels, [], StageSettings(steps=4), torch.Generator().manual_seed(3))
    zero = iterative_decode(prior, canvas, labels, [], StageSettings(steps=4, guidance_scale=0.0),
                            torch.Generator().manual_seed(3))
    guided = iterative_decode(prior, canvas, labels, [], StageSettings(steps=4, guidance_scale=3.0),
                              torch.Generator().manual_seed(3))
    assert torch.equal(plain.tokens, zero.tokens)
    assert not torch.equal(plain.tokens, guided.tokens)


def test_batched_guidance_forward_equals_two_separate_forwards():
    prior = tiny_prior(conditions=(LevelSpec("top", 2, 2, 8),))
    tokens = torch.randint(0, 17, (3, 16))
    labels = torch.tensor([0, 1, 2])
    top = torch.randint(0, 8, (3, 2, 2))
    null = torch.full_like(labels, prior.null_class)
    context = prior.encode_conditions([torch.cat([top, top])], torch.cat([labels, null]))
    scale = 1.5
    batched = guided_logits(prior, tokens, labels, context, scale)
    cond = prior(tokens, labels, prior.encode_conditions([top], labels))
    uncond = prior(tokens, null, prior.encode_conditions([top], null))
    assert torch.allclose(batched, cond + scale * (cond - uncond), atol=1e-5)
