"""Is it faster to train two runs side by side at one thread each than one after another at two?

    .venv/bin/python benchmarks/bench_train_jobs.py configs/medium/strait_r.yaml --steps 100 --work /tmp/bench_jobs

What ``train_jobs`` in a compare config rests on. Trains CONFIG with every component cut to
``--steps`` optimizer steps (the token cache is encoded in full), as ``stratagen train`` processes:
one run at the machine's threads, one run at one thread, then ``--jobs`` runs side by side at
``threads // jobs`` threads each. Prints, per setting, each stage's time in each run (from the
``(done in N s)`` lines), the wall time from the first process's start to the last one's end, and
the throughput: runs trained per hour at that wall time, start-up and token encoding included, as
a comparison pays them. Run it on an idle machine: it measures what the cores do, and anything else
running shares them.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from stratagen import config as cfg
from stratagen.cli.arguments import positive_int
from stratagen.engine.pipeline import load_config

DONE = re.compile(r"^(.+?): \d+/(\d+) .*\(done in (\d+) s\)$")


def short_config(source: str, steps: int, run_dir: Path) -> str:
    """CONFIG with every component cut to ``steps`` steps, into ``run_dir``, as YAML."""
    config = load_config(source, [f"run.dir={run_dir}"])
    for section in (config.tokenizers, config.priors, config.critics):
        for entry in section.values():
            entry.train.steps = steps
            entry.train.checkpoint_every = steps
            entry.train.image_every = steps
    return cfg.dump_config(config)


def train_side_by_side(source: str, steps: int, work: Path, jobs: int, threads: int) -> dict[str, list[int]]:
    """``jobs`` runs trained at once, ``threads`` each; {stage: [seconds in each run]}."""
    children = []
    for j in range(jobs):
        run_dir = work / f"jobs{jobs}-threads{threads}-{j}"
        path = work / f"{run_dir.name}.yaml"
        path.write_text(short_config(source, steps, run_dir))
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), STRATAGEN_PROGRESS="1")
        with open(work / f"{run_dir.name}.log", "w") as log:  # a file: a full pipe would stall a child
            children.append((log.name, subprocess.Popen([sys.executable, "-m", "stratagen.cli", "train", str(path)],
                                                        env=env, stdout=log, stderr=subprocess.STDOUT)))
    stages: dict[str, list[int]] = {}
    for log, child in children:
        child.wait()
        out = Path(log).read_text(errors="replace")
        if child.returncode:
            sys.exit(f"training failed (exit {child.returncode}):\n{out[-2000:]}")
        for line in out.replace("\r", "\n").splitlines():
            match = DONE.match(line.strip())
            if match:
                stages.setdefault(match.group(1), []).append(int(match.group(3)))
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", help="a run config, e.g. configs/medium/strait_r.yaml")
    parser.add_argument("--steps", type=positive_int, default=100, help="optimizer steps of every component")
    parser.add_argument("--jobs", type=positive_int, default=2, help="runs side by side")
    parser.add_argument("--work", default="/tmp/bench_train_jobs", help="run directories (removed first)")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cores = torch.get_num_threads()
    settings = [(1, cores), (1, 1), (args.jobs, max(1, cores // args.jobs))]
    print(f"{args.config}, every component {args.steps} steps; {cores} threads in this process")
    print("| runs at once | threads each | stage seconds (each run) | wall s | runs per hour |")
    print("|---|---|---|---|---|")
    for jobs, threads in settings:
        start = time.perf_counter()
        stages = train_side_by_side(args.config, args.steps, work, jobs, threads)
        wall = time.perf_counter() - start
        detail = ", ".join(f"{name} {'/'.join(map(str, seconds))}" for name, seconds in stages.items())
        print(f"| {jobs} | {threads} | {detail} | {wall:.0f} | {jobs * 3600 / wall:.1f} |", flush=True)


if __name__ == "__main__":
    main()
