"""One decode stage of a config's first sampler stage, per way of running the prior and per dtype,
interleaved: milliseconds per image, model FLOPs (FlopCounterMode) and the share of a dense matmul
peak of the same dtype measured in the same run (before and after the timings; the larger is used).

Ways of running the prior (``--networks``):

* ``autocast``: the trained fp32 module, under bf16 autocast for bf16 (how sampling ran before the
  inference copies; fp32 matmuls through torch's default CPU GEMM);
* ``copy``: what ``Pipeline.sample`` runs, the inference copy
  (:func:`stratagen.engine.devices.precision.inference_copies`: weights cast once, oneDNN linears).

    python benchmarks/bench_decode.py configs/demo/strait_r.yaml --batch 128
    python benchmarks/bench_decode.py configs/demo/maskgit_f16.yaml --batch 8 --set data.resolution=64 \\
        --set tokenizers.vq.model.factor=4 --set priors.main.model.depth=8 \\
        --set priors.main.model.width=512 --set priors.main.model.mlp_dim=2048     # 8 x 512, 256 tokens
    # where the time goes (torch.profiler, one decode per variant, ops by self time):
    python benchmarks/bench_decode.py configs/demo/strait_r.yaml --profile 12
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
from torch.profiler import ProfilerActivity, profile

from stratagen import api
from stratagen.engine.evaluation.bench import count_flops, matmul_peak
from stratagen.engine.devices.precision import autocast, inference_copies
from stratagen.registry import UNKNOWN, Prior
from stratagen.sampling import iterative_decode

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
NETWORKS = ("autocast", "copy")


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
    parser.add_argument("--networks", default=",".join(NETWORKS), help=f"comma-separated, of {', '.join(NETWORKS)}")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help=f"comma-separated, of {', '.join(DTYPES)}")
    parser.add_argument("--previous", help="a decode.py whose iterative_decode to time beside the current one")
    parser.add_argument("--profile", type=int, default=0, metavar="ROWS",
                        help="instead of timing, profile one decode per variant and print its top ROWS ops")
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
    dtypes = args.dtypes.split(",")
    nets: dict[tuple[str, str], Prior] = {}
    for how in args.networks.split(","):
        for d in dtypes:
            nets[how, d] = prior if how == "autocast" else inference_copies([prior], DTYPES[d], cpu)[0]

    def run(key: tuple[str, str, str]) -> None:
        loop, how, dtype = key
        with torch.no_grad(), autocast(cpu, DTYPES[dtype]):
            loops[loop](nets[how, dtype], canvas, labels, [], stage.settings, torch.Generator().manual_seed(0))

    keys = [(loop, how, d) for loop in loops for how, d in nets]
    params = sum(p.numel() for p in prior.parameters())
    print(f"stage {stage.stream}: {prior.target.height}x{prior.target.width} tokens, {stage.settings.steps} steps, "
          f"{params / 1e6:.1f}M parameters, batch {args.batch}, {torch.get_num_threads()} threads")
    if args.profile:
        for k in keys:
            run(k)  # warm-up
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                run(k)
            print(f"--- {' '.join(k)}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))
        return
    peaks = {d: [matmul_peak(cpu, DTYPES[d])] for d in dtypes}
    flops = {k: count_flops(lambda: run(k)) for k in keys}  # also the warm-up
    times: dict[tuple[str, str, str], list[float]] = {k: [] for k in keys}
    for _ in range(args.repeats):
        for k in keys:
            start = time.perf_counter()
            run(k)
            times[k].append(time.perf_counter() - start)
    for d in dtypes:
        peaks[d].append(matmul_peak(cpu, DTYPES[d]))
    print("matmul peak GFLOP/s (before, after): " + ", ".join(f"{d} {p[0] / 1e9:.0f}, {p[1] / 1e9:.0f}"
                                                              for d, p in peaks.items()))
    for (loop, how, dtype), ts in times.items():
        seconds = statistics.median(ts)
        achieved = flops[loop, how, dtype] / seconds
        print(f"  {loop:<8} {how:<8} {dtype}: {seconds / args.batch * 1e3:8.2f} ms/image  "
              f"{flops[loop, how, dtype] / args.batch / 1e9:.3f} GFLOP/image  {achieved / 1e9:6.1f} GFLOP/s  "
              f"= {achieved / max(peaks[dtype]):.0%} of the {dtype} matmul peak")


if __name__ == "__main__":
    main()
