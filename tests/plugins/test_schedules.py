import math

import pytest
import torch

from stratagen.registry import get_registry

N = 256
# gamma at r = 0, 0.5, 1 (StraIT Table 10; log and exp as official MaskGIT defines them with N tokens)
EXPECTED = {
    "cosine": (1.0, math.cos(math.pi / 4), 0.0),
    "linear": (1.0, 0.5, 0.0),
    "square": (1.0, 0.75, 0.0),
    "cubic": (1.0, 0.875, 0.0),
    "sqrt": (1.0, 1 - math.sqrt(0.5), 0.0),
    "log": (1.0, 1 / math.log2(N), 0.0),
    "exp": (1 - 1 / N, 1 - 2 ** (-math.log2(N) / 2), 0.0),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_schedule_values_and_monotonicity(name):
    schedule = get_registry().build("schedule", name)
    values = schedule(torch.tensor([0.0, 0.5, 1.0]), N)
    assert values.dtype == torch.float32  # official MaskGIT's arithmetic
    assert torch.allclose(values.double(), torch.tensor(EXPECTED[name], dtype=torch.float64), rtol=0, atol=1e-7)
    curve = schedule(torch.linspace(0, 1, 101), N)
    assert (curve[1:] <= curve[:-1] + 1e-12).all(), "a mask schedule must not increase"
    assert curve.min() >= 0 and curve.max() <= 1


def test_all_table10_schedules_registered():
    assert set(EXPECTED) <= set(get_registry().names("schedule"))


def test_concave_schedules_keep_more_masked_early():
    registry = get_registry()
    r = torch.tensor(0.25)
    assert registry.build("schedule", "cosine")(r, N) > registry.build("schedule", "linear")(r, N) > \
        registry.build("schedule", "sqrt")(r, N)
