"""Decode orders (confidence, random, Halton) and the official MaskGIT arithmetic for masked counts."""
from __future__ import annotations


import pytest
import torch

from official_maskgit import official_trajectory
from stratagen.plugins.maskgit import MaskedTokenTransformer
from stratagen.plugins.orders import HaltonOrder, halton_order, radical_inverse
from stratagen.registry import UNKNOWN, LevelSpec, StageSettings, get_registry
from stratagen.sampling import count_plan, iterative_decode

SCHEDULES = ["cosine", "linear", "square", "cubic", "sqrt", "log", "exp"]


def tiny_prior(h: int = 4, w: int = 4, codebook: int = 16) -> MaskedTokenTransformer:
    torch.manual_seed(0)
    return MaskedTokenTransformer(target=LevelSpec("tokens", h, w, codebook), num_classes=3, depth=1, width=32,
                                  heads=2, mlp_dim=64, dropout=0.0).eval()


# ----------------------------------------------------------------------------- official arithmetic
# Trajectories from tests/official_maskgit.py: the official loop's formulas in float32, not our code.
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_count_plans_equal_the_official_float32_trajectories_on_blank_canvases(schedule):
    rows = [(n0, steps) for n0 in (16, 64, 256, 1024) for steps in (2, 4, 6, 8, 10, 12, 16, 18, 24)]
    for n0, steps in rows:
        plan = count_plan(get_registry().build("schedule", schedule), steps, torch.tensor([n0]))
        assert plan[1:, 0].tolist() == official_trajectory(schedule, steps, n0), (schedule, n0, steps)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_count_plans_equal_the_official_trajectories_of_each_rows_own_unknown_count(schedule):
    """Partial canvases: one batch whose rows start with different numbers of unknown tokens
    (every N0 from 0 to 300, and a few larger), each on its own official trajectory."""
    n0s = list(range(301)) + [511, 777, 1000, 1023, 4095]
    for steps in (3, 7, 12, 18):
        plan = count_plan(get_registry().build("schedule", schedule), steps, torch.tensor(n0s))
        for row, n0 in enumerate(n0s):
            assert plan[1:, row].tolist() == official_trajectory(schedule, steps, n0), (schedule, steps, n0)


def test_cosine_after_the_twelfth_of_18_steps_leaves_31_of_64_masked():
    """cos(pi/2 * 12/18) is 0.49999997 in float32 (0.5 in exact arithmetic): floor(64 * it) = 31."""
    plan = count_plan(get_registry().build("schedule", "cosine"), 18, torch.tensor([64]))
    assert official_trajectory("cosine", 18, 64)[11] == 31 and int(plan[12, 0]) == 31


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_decoding_leaves_the_official_counts_masked_on_partial_canvases(schedule):
    prior = tiny_prior(8, 8, 16)
    canvas = torch.full((4, 64), UNKNOWN)
    canvas[1, :10] = 3       # rows with 64, 54, 32 and 7 unknown tokens at the start
    canvas[2, ::2] = 5
    canvas[3, 7:] = 1
    result = iterative_decode(prior, canvas, torch.tensor([0, 1, 2, 0]), [],
                              StageSettings(steps=8, schedule=schedule), torch.Generator().manual_seed(0))
    for row, n0 in enumerate((64, 54, 32, 7)):
        assert [int(m[row]) for m in result.masked_after_step] == official_trajectory(schedule, 8, n0), (schedule, n0)
    assert (result.tokens >= 0).all() and (result.tokens[canvas != UNKNOWN] == canvas[canvas != UNKNOWN]).all()


# ----------------------------------------------------------------------------- Halton
def test_radical_inverse_values():
    assert [radical_inverse(i, 2) for i in range(1, 5)] == [0.5, 0.25, 0.75, 0.125]
    assert [radical_inverse(i, 3) for i in range(1, 4)] == pytest.approx([1 / 3, 2 / 3, 1 / 9])


@pytest.mark.parametrize("h, w", [(4, 4), (8, 8), (3, 5), (16, 16)])
def test_halton_order_visits_every_cell_once(h, w):
    order = halton_order(h, w)
    assert sorted(order.tolist()) == list(range(h * w))


def test_halton_order_starts_spread_out():
    order = halton_order(8, 8)
    rows, cols = (order[:4] // 8).tolist(), (order[:4] % 8).tolist()
    # (1/2, 1/3), (1/4, 2/3), (3/4, 1/9), (1/8, 4/9): one point in each quadrant first
    assert list(zip(rows, cols)) == [(4, 2), (2, 5), (6, 0), (1, 3)]


class RecordingHalton(HaltonOrder):
    """The Halton order, remembering which positions were still unknown at each step."""

    def __init__(self):
        self.unknown: list[torch.Tensor] = []

    def scores(self, state, context):
        self.unknown.append(state.unknown.clone())
        return super().scores(state, context)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_halton_decoding_reveals_positions_along_the_sequence(schedule):
    prior = tiny_prior(4, 4)
    order = RecordingHalton()
    result = iterative_decode(prior, torch.full((2, 16), UNKNOWN), torch.tensor([0, 1]), [],
                              StageSettings(steps=5, schedule=schedule), torch.Generator().manual_seed(1), order)
    sequence = halton_order(4, 4).tolist()
    for step, unknown in enumerate(order.unknown[1:]):
        revealed = 16 - int(result.masked_after_step[step][0])
        for row in unknown:
            assert set(torch.nonzero(~row).flatten().tolist()) == set(sequence[:revealed]), (step, revealed)
    assert (result.tokens >= 0).all()


def test_halton_continues_around_known_tokens():
    prior = tiny_prior(4, 4)
    canvas = torch.full((1, 16), UNKNOWN)
    sequence = halton_order(4, 4).tolist()
    canvas[0, sequence[:3]] = 7  # the sequence's first three cells are given
    order = RecordingHalton()
    iterative_decode(prior, canvas, torch.tensor([0]), [], StageSettings(steps=3, schedule="linear"),
                     torch.Generator().manual_seed(0), order)
    revealed = set(torch.nonzero(~order.unknown[1][0]).flatten().tolist())
    assert set(sequence[:3]) < revealed and revealed == set(sequence[:len(revealed)])


def test_random_order_is_seeded_and_differs_from_confidence():
    prior = tiny_prior(4, 4)
    canvas = torch.full((3, 16), UNKNOWN)
    labels = torch.tensor([0, 1, 2])

    def run(order: str, seed: int) -> torch.Tensor:
        # no Gumbel noise: confidence ranks by log-probability alone (with noise, the near-uniform
        # logits of an untrained prior rank like the noise, a monotone map of the same uniforms)
        return iterative_decode(prior, canvas, labels, [], StageSettings(steps=6, order=order, choice_temperature=0),
                                torch.Generator().manual_seed(seed)).tokens

    assert torch.equal(run("random", 5), run("random", 5))
    assert not torch.equal(run("random", 5), run("random", 6))
    assert not torch.equal(run("random", 5), run("confidence", 5))
