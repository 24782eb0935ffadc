"""The fast decoding loop: its sampler is torch.multinomial's algorithm (exact Gumbel-max), it gives
the reference loop's tokens on fixed logits, and it reads nothing back to the host."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from stratagen.plugins.maskgit import MaskedTokenTransformer
from stratagen.registry import UNKNOWN, LevelSpec, Prior, StageSettings, get_registry
from stratagen.sampling import count_plan, iterative_decode, masked_counts, sample_tokens


class FixedLogitsPrior(Prior):
    """A prior whose logits are a fixed table ``[B, N, V]`` plus a fixed function of the canvas."""

    def __init__(self, batch: int, h: int = 4, w: int = 4, codebook: int = 16, seed: int = 0):
        super().__init__()
        self.target, self.conditions, self.num_classes = LevelSpec("tokens", h, w, codebook), (), 3
        generator = torch.Generator().manual_seed(seed)
        self.table = torch.randn(batch, h * w, codebook, generator=generator) * 2
        self.mix = torch.randn(codebook + 1, codebook, generator=generator)

    def encode_conditions(self, conditions, labels):
        return None

    def forward(self, tokens, labels, context=None, positions=None):
        neighbour = torch.roll(tokens, 1, dims=1)  # the logits depend on what is already decoded
        logits = self.table[: tokens.shape[0]] + self.mix[neighbour]
        return logits if positions is None else logits.gather(1, positions[..., None].expand(-1, -1, logits.shape[-1]))

    def loss(self, tokens, labels, conditions, schedule, generator):
        raise NotImplementedError


def reference_decode(prior, canvas, labels, settings, generator):
    """The previous loop: logits at every position, multinomial over a full softmax, two argsorts
    (drawing for the still-masked rows only, as the fast loop does; see :func:`sample_tokens`)."""
    schedule = get_registry().build("schedule", settings.schedule)
    order = get_registry().build("order", settings.order)
    from stratagen.registry import DecodeState

    mask_id = prior.mask_token_id
    ids = torch.where(canvas == UNKNOWN, mask_id, canvas)
    unknown_at_start = (ids == mask_id).sum(dim=1)
    B, N = ids.shape
    for step in range(settings.steps):
        logits = prior(ids, labels, None).float()
        probs = torch.softmax(logits / settings.temperature, dim=-1)
        unknown = ids == mask_id
        sampled = ids.clone()
        sampled[unknown] = torch.multinomial(probs[unknown], 1, generator=generator).squeeze(-1)
        if step == settings.steps - 1:
            return sampled
        log_probs = torch.log(probs.gather(-1, sampled[..., None]).squeeze(-1).clamp_min(1e-30))
        state = DecodeState(step, settings.steps, sampled, log_probs, unknown, labels, [], prior.target.height,
                            prior.target.width, settings.choice_temperature, generator)
        scores = torch.where(unknown, order.scores(state, None).float(), torch.inf)
        keep_masked = masked_counts(schedule, step, settings.steps, unknown_at_start, unknown.sum(dim=1))
        ranks = scores.argsort(dim=1).argsort(dim=1)
        ids = torch.where(ranks < keep_masked[:, None], mask_id, sampled)
    return ids


def test_sample_tokens_draws_what_multinomial_draws():
    logits = torch.randn(3, 64, 256, generator=torch.Generator().manual_seed(0)) * 3
    for temperature in (0.5, 1.0, 2.0):
        tokens, log_probs = sample_tokens(logits, temperature, torch.Generator().manual_seed(7))
        probs = torch.softmax(logits / temperature, -1)
        expected = torch.multinomial(probs.view(-1, 256), 1, generator=torch.Generator().manual_seed(7)).view(3, 64)
        assert torch.equal(tokens, expected)
        assert torch.allclose(log_probs, probs.gather(-1, tokens[..., None]).squeeze(-1).log(), atol=1e-6)


def test_sample_tokens_frequencies_are_the_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    draws = 200_000
    tokens, _ = sample_tokens(logits.expand(draws, -1), 0.8, torch.Generator().manual_seed(3))
    frequencies = torch.bincount(tokens, minlength=5).double() / draws
    # binomial standard deviation <= 0.0012 at this count: 0.005 is over four of them
    assert (frequencies - torch.softmax(logits.double() / 0.8, -1)).abs().max() < 0.005


CANVASES = {
    "blank": lambda: torch.full((3, 16), UNKNOWN),
    "five_known_per_row": lambda: torch.stack([torch.where(torch.isin(torch.arange(16), torch.tensor(known)),
                                                           torch.tensor(value), UNKNOWN)
                                               for known, value in [([0, 3, 5, 9, 15], 2), ([1, 2, 3, 4, 5], 7),
                                                                    ([6, 8, 10, 12, 14], 11)]]),
}


@pytest.mark.parametrize("order", ["confidence", "random", "halton"])
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("canvas", sorted(CANVASES))
def test_fast_loop_gives_the_reference_tokens_on_fixed_logits(order, schedule, canvas):
    prior = FixedLogitsPrior(3)
    labels = torch.tensor([0, 1, 2])
    settings = StageSettings(steps=6, schedule=schedule, order=order, temperature=1.3)
    fast = iterative_decode(prior, CANVASES[canvas](), labels, [], settings, torch.Generator().manual_seed(11)).tokens
    reference = reference_decode(prior, CANVASES[canvas](), labels, settings, torch.Generator().manual_seed(11))
    assert torch.equal(fast, reference)
    assert not torch.equal(fast, reference_decode(prior, CANVASES[canvas](), labels, settings,
                                                  torch.Generator().manual_seed(12)))


def test_fast_loop_gives_the_reference_tokens_with_a_transformer():
    torch.manual_seed(0)
    prior = MaskedTokenTransformer(target=LevelSpec("tokens", 4, 4, 16), num_classes=3, depth=1, width=32, heads=2,
                                   mlp_dim=64, dropout=0.0).eval()
    labels = torch.tensor([0, 1, 2, 0])
    settings = StageSettings(steps=5)
    canvas = torch.full((4, 16), UNKNOWN)
    fast = iterative_decode(prior, canvas, labels, [], settings, torch.Generator().manual_seed(4)).tokens
    assert torch.equal(fast, reference_decode(prior, canvas, labels, settings, torch.Generator().manual_seed(4)))


def test_count_plan_follows_masked_counts_per_row():
    cosine = get_registry().build("schedule", "cosine")
    plan = count_plan(cosine, 4, torch.tensor([16, 5, 0]))  # floor(N0 cos(pi/2 (t+1)/4)), clamped
    assert plan.tolist() == [[16, 5, 0], [14, 4, 0], [11, 3, 0], [6, 1, 0], [0, 0, 0]]


#: ops that read tensor values back to the host (or whose output shape depends on them)
HOST_READS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
              "aten.multinomial.default", "aten.unique2.default", "aten._unique2.default"}


class OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name == "aten.index.Tensor" and any(i is not None and i.dtype == torch.bool for i in args[1]):
            name += " (boolean mask)"
        self.ops.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("order, guidance", [("confidence", 0.0), ("random", 0.0), ("halton", 2.0)])
def test_decode_loop_reads_nothing_back_to_the_host(order, guidance):
    prior = FixedLogitsPrior(4)  # guidance runs 2 x 2 rows
    canvas = CANVASES["five_known_per_row"]()[:2]
    with OpRecorder() as recorder:
        iterative_decode(prior, canvas, torch.tensor([0, 1]), [],
                         StageSettings(steps=4, order=order, guidance_scale=guidance), torch.Generator().manual_seed(0))
    assert "aten.topk.default" in recorder.ops
    assert [op for op in recorder.ops if op in HOST_READS or "boolean mask" in op] == []
