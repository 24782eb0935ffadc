"""Decode orders (confidence, random, Halton) and the official MaskGIT arithmetic for masked counts."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stratagen.plugins.maskgit import MaskedTokenTransformer
from stratagen.plugins.orders import HaltonOrder, halton_order, radical_inverse
from stratagen.registry import UNKNOWN, LevelSpec, StageSettings, get_registry
from stratagen.sampling import iterative_decode, masked_counts

SCHEDULES = ["cosine", "linear", "square", "cubic", "sqrt", "log", "exp"]


def tiny_prior(h: int = 4, w: int = 4, codebook: int = 16) -> MaskedTokenTransformer:
    torch.manual_seed(0)
    return MaskedTokenTransformer(target=LevelSpec("tokens", h, w, codebook), num_classes=3, depth=1, width=32,
                                  heads=2, mlp_dim=64, dropout=0.0).eval()


# ----------------------------------------------------------------------------- official arithmetic
def official_gamma(name: str, ratio: float, total: np.ndarray) -> np.ndarray:
    """MaskGIT's schedules on the Python-float ratio, with each row's unknown count (log, exp)."""
    total = total.astype(np.float64)
    return {"cosine": np.cos(math.pi / 2.0 * ratio) + 0 * total, "linear": 1.0 - ratio + 0 * total,
            "square": 1.0 - ratio ** 2 + 0 * total, "cubic": 1.0 - ratio ** 3 + 0 * total,
            "sqrt": 1.0 - math.sqrt(ratio) + 0 * total,
            "log": -np.log2(ratio) / np.log2(total),
            "exp": 1.0 - np.exp2(-np.log2(total) * (1.0 - ratio))}[name]


def official_counts(name: str, steps: int, unknown_at_start: np.ndarray, unknown_before: list[np.ndarray]):
    """Per step, floor(N0 * float32(mask_ratio)) clamped to [1, unknown - 1], as the official loop."""
    out = []
    for step in range(steps - 1):
        ratio = (step + 1) / steps
        gamma = np.clip(official_gamma(name, ratio, unknown_at_start), 0, 1).astype(np.float32)
        keep = np.floor(unknown_at_start.astype(np.float32) * gamma).astype(np.int64)
        out.append(np.maximum(1, np.minimum(unknown_before[step] - 1, keep)))
    return out


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_masked_counts_equal_the_official_loop_for_rows_with_different_known_tokens(schedule):
    prior = tiny_prior(8, 8, 16)
    canvas = torch.full((4, 64), UNKNOWN)
    canvas[1, :10] = 3       # rows with 64, 54, 32 and 7 unknown tokens at the start
    canvas[2, ::2] = 5
    canvas[3, 7:] = 1
    result = iterative_decode(prior, canvas, torch.tensor([0, 1, 2, 0]), [],
                              StageSettings(steps=8, schedule=schedule), torch.Generator().manual_seed(0))
    unknown_at_start = (canvas == UNKNOWN).sum(1).numpy()
    before = [unknown_at_start] + [t.numpy() for t in result.masked_after_step[:-1]]
    expected = official_counts(schedule, 8, unknown_at_start, before)
    for step, counts in enumerate(expected):
        assert result.masked_after_step[step].tolist() == counts.tolist(), (schedule, step)
    assert (result.tokens >= 0).all() and (result.tokens[canvas != UNKNOWN] == canvas[canvas != UNKNOWN]).all()


def test_log_and_exp_use_each_rows_own_count():
    log = get_registry().build("schedule", "log")
    counts = torch.tensor([64, 7])
    kept = masked_counts(log, 1, 8, counts, counts)
    assert kept.tolist() == [math.floor(64 * (-math.log2(0.25) / 6)), math.floor(7 * -math.log2(0.25) / math.log2(7))]


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
