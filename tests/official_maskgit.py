"""An independent float32 statement of official MaskGIT's decode count arithmetic, for tests.

Written from the official JAX loop (maskgit/libml/parallel_decode.py and mask_schedule.py), not
from stratagen's code: inside ``lax.while_loop`` the step is an int32 array, so every quantity
is float32: ``ratio = (step + 1) / T``, the schedule on that ratio and on each row's count N0 of
unknown tokens, the clip to [1e-6, 1], ``floor(N0 * mask_ratio)``, then the clamp to
[1, unknown - 1]. Basic operations are numpy float32; cos, log2, exp2 and the power of the
``pow3`` schedule are the float32 rounding of the exact value (a correctly rounded float32 libm;
numpy's vectorised float32 cos and pow are up to one unit in the last place away from it).
"""
from __future__ import annotations

import math

import numpy as np

F = np.float32
#: stratagen's schedule names -> official mask_scheduling_method names
OFFICIAL_NAMES = {"cosine": "cosine", "linear": "uniform", "square": "pow2", "cubic": "pow3", "sqrt": "pow0.5",
                  "log": "log", "exp": "exp"}


def _rounded(fn, x: np.float32) -> np.float32:
    return F(fn(float(x)))


def official_mask_ratio(name: str, ratio: np.float32, n0: int) -> np.float32:
    """``mask_schedule.schedule(ratio, n0, method)`` in float32, clipped to [1e-6, 1]."""
    method, total = OFFICIAL_NAMES[name], F(n0)
    if method == "uniform":
        value = F(1) - ratio
    elif method == "pow2":
        value = F(1) - ratio * ratio
    elif method == "pow3":
        value = F(1) - _rounded(lambda x: x**3, ratio)
    elif method == "pow0.5":
        value = F(1) - np.sqrt(ratio)
    elif method == "cosine":
        value = _rounded(math.cos, F(math.pi / 2) * ratio)
    elif method == "log":
        value = -_rounded(math.log2, ratio) / _rounded(math.log2, total) if n0 > 1 else F(np.inf)
    else:  # exp
        value = F(1) - _rounded(math.exp2, -_rounded(math.log2, total) * (F(1) - ratio))
    return F(min(max(value, F(1e-6)), F(1)))


def official_trajectory(name: str, steps: int, n0: int) -> list[int]:
    """Tokens left masked after each step of a canvas with ``n0`` unknown tokens (0 after the last)."""
    unknown, out = n0, []
    for step in range(steps - 1):
        ratio = F(step + 1) / F(steps)
        mask_len = int(np.floor(F(n0) * official_mask_ratio(name, ratio, n0))) if n0 else 0
        unknown = max(1, min(unknown - 1, mask_len)) if unknown else 0
        out.append(unknown)
    return out + [0]
