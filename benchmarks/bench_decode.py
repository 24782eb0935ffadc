"""One decode stage of a config's first sampler stage, in fp32 and in bf16 autocast, interleaved:
milliseconds per image, model FLOPs (FlopCounterMode) and the share of a dense matmul peak of the
same dtype measured in the same run (before and after the timings; the larger is used).

    python benchmarks/bench_decode.py configs/demo/strait_r.yaml --batch 128
    python benchmarks/bench_decode.py configs/demo/maskgit_f16.yaml --batch 32 \\
        --set priors.main.model.depth=8 --set priors.main.model.width=512 --set priors.main.model.mlp_dim=2048
    # against an earlier decode loop (e.g. before issue 10):
    git show 4b1a1c0:platform/stratagen/sampling/decode.py > /tmp/previous_decode.py
    python benchmarks/bench_decode.py configs/demo/strait_r.yaml --previous /tmp/previous_decode.py

Figures are printed, never asserted. Untrained weights (speed does not depend on them).
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from typing import Callable

import torch

from stratagen import api
from stratagen.engine.bench import count_flops, matmul_peak
from stratagen.registry import UNKNOWN
from stratagen.sampling import iterative_decode

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def load_loop(path: str) -> Callable:
    """``iterative_decode`` of the decode module at ``path``."""
    spec = importlib.util.spec_from_file_location("previous_decode", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["previous_decode"] = module
    spec.loader.exec_module(module)
    return module.iterative_decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds (median)")
    parser.add_argument("--previous", help="a decode.py whose iterative_decode to time beside the current one")
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    args = parser.parse_args()
    config = api.load(args.config, ["run.device=cpu", *args.set])
    built = api.build(config)
    stage = built.sampler.stages(built.model)[0]
    prior = built.model.prior_for(stage.stream).prior.eval()
    canvas = torch.full((args.batch, prior.target.length), UNKNOWN)
    labels = torch.arange(args.batch) % built.model.num_classes
    loops = {"current": iterative_decode} | ({"previous": load_loop(args.previous)} if args.previous else {})
    cpu = torch.device("cpu")

    def run(loop: Callable, dtype: str) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loop(prior, canvas, labels, [], stage.settings, torch.Generator().manual_seed(0))

    keys = [(loop, dtype) for loop in loops for dtype in DTYPES]
    peaks = {d: [matmul_peak(cpu, t)] for d, t in DTYPES.items()}
    flops = {k: count_flops(lambda: run(loops[k[0]], k[1])) for k in keys}  # also the warm-up
    times: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
    for _ in range(args.repeats):
        for k in keys:
            start = time.perf_counter()
            run(loops[k[0]], k[1])
            times[k].append(time.perf_counter() - start)
    for d, t in DTYPES.items():
        peaks[d].append(matmul_peak(cpu, t))
    params = sum(p.numel() for p in prior.parameters())
    print(f"stage {stage.stream}: {prior.target.height}x{prior.target.width} tokens, {stage.settings.steps} steps, "
          f"{params / 1e6:.1f}M parameters, batch {args.batch}, {torch.get_num_threads()} threads; matmul peak "
          f"GFLOP/s (before, after): " + ", ".join(f"{d} {p[0] / 1e9:.0f}, {p[1] / 1e9:.0f}" for d, p in peaks.items()))
    for (loop, dtype), ts in times.items():
        seconds = statistics.median(ts)
        achieved = flops[loop, dtype] / seconds
        print(f"  {loop:<8} {dtype}: {seconds / args.batch * 1e3:8.2f} ms/image  "
              f"{flops[loop, dtype] / args.batch / 1e9:.3f} GFLOP/image  {achieved / 1e9:6.1f} GFLOP/s  "
              f"= {achieved / max(peaks[dtype]):.0%} of the {dtype} matmul peak")


if __name__ == "__main__":
    main()
