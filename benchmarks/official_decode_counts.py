"""stratagen's decode count plans against official MaskGIT's count arithmetic run in JAX.

Two steps, because JAX is not a stratagen dependency (install it in a separate environment):

    python -m venv /tmp/jaxenv && /tmp/jaxenv/bin/pip install jax numpy
    /tmp/jaxenv/bin/python benchmarks/official_decode_counts.py jax /tmp/official_counts.npz
    .venv/bin/python benchmarks/official_decode_counts.py compare /tmp/official_counts.npz

``jax`` evaluates the official formulas (``maskgit/libml/parallel_decode.py`` and
``mask_schedule.py``: ratio = (step + 1) / T, the schedule on it and on N0, the clip to
[1e-6, 1], floor(N0 * mask_ratio), the clamp to [1, unknown - 1]) inside a ``lax.while_loop``
on blank canvases of N0 = 1..4096 tokens for T = 1..24, twice: op by op (``disable_jit``) and
compiled (``jax.jit``, as the official sampler runs). ``compare`` prints, per schedule, how many
trajectories stratagen's :func:`stratagen.sampling.count_plan` gives differently.
"""
from __future__ import annotations

import argparse
import math

import numpy as np

#: stratagen's schedule names -> official mask_scheduling_method names
METHODS = {"cosine": "cosine", "linear": "uniform", "square": "pow2", "cubic": "pow3", "sqrt": "pow0.5",
           "log": "log", "exp": "exp"}
N0 = np.arange(1, 4097, dtype=np.int32)
STEPS = range(1, 25)


def run_jax(out: str) -> None:
    import jax
    import jax.numpy as jnp
    from jax import lax

    def mask_ratio(ratio, total, method):
        if method == "uniform":
            value = 1.0 - ratio
        elif method.startswith("pow"):
            value = 1.0 - ratio ** float(method[3:])
        elif method == "cosine":
            value = lax.cos(math.pi / 2.0 * ratio)
        elif method == "log":
            value = -jnp.log2(ratio) / jnp.log2(total)
        else:
            value = 1 - jnp.exp2(-jnp.log2(total) * (1 - ratio))
        return jnp.clip(value, 1e-6, 1.0)

    def trajectory(n0, steps, method):
        def body(state):
            step, unknown, counts = state
            ratio = 1.0 * (step + 1) / steps
            kept = jnp.floor(n0 * mask_ratio(ratio, n0, method))
            kept = jnp.maximum(1, jnp.minimum(unknown - 1, kept)).astype(jnp.int32)
            return step + 1, kept, counts.at[step].set(kept)

        counts = jnp.zeros((steps, n0.shape[0]), jnp.int32)
        return lax.while_loop(lambda s: s[0] < steps, body, (jnp.array(0), n0, counts))[2]

    compiled = jax.jit(trajectory, static_argnums=(1, 2))
    result = {}
    for name, method in METHODS.items():
        for steps in STEPS:
            result[f"jit/{name}/{steps}"] = np.asarray(compiled(jnp.asarray(N0), steps, method))
            with jax.disable_jit():
                result[f"eager/{name}/{steps}"] = np.asarray(trajectory(jnp.asarray(N0), steps, method))
    np.savez(out, **result)
    print(f"{len(result)} trajectory tables in {out} (jax {jax.__version__})")


def compare(path: str) -> None:
    import torch

    from stratagen.registry import get_registry
    from stratagen.sampling import count_plan

    tables = np.load(path)
    for mode in ("eager", "jit"):
        differing, total = {}, 0
        for name in METHODS:
            schedule = get_registry().build("schedule", name)
            for steps in STEPS:
                ours = count_plan(schedule, steps, torch.as_tensor(N0, dtype=torch.long))[1:steps].numpy()
                official = tables[f"{mode}/{name}/{steps}"][: steps - 1]
                differing[name] = differing.get(name, 0) + int((ours != official).any(axis=0).sum())
                total += len(N0)
        print(f"{mode}: {sum(differing.values())} of {total} trajectories differ: {differing}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["jax", "compare"])
    parser.add_argument("path", help="the .npz of official trajectories (written by `jax`, read by `compare`)")
    args = parser.parse_args()
    run_jax(args.path) if args.mode == "jax" else compare(args.path)
