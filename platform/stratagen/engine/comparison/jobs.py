"""Training a comparison's runs side by side, each in a process of its own (``train_jobs: N``).

A comparison trains its runs one after another in its own process by default. Small models on a
CPU use its cores poorly (two threads train a 64 px prior about 1.3x as fast as one), so with
``train_jobs: N`` every run with something left to train is trained by ``stratagen train
<config> --resume`` in a child process, up to N at once, each with ``T // N`` intra-op threads
(T: this process's threads, ``OMP_NUM_THREADS`` or the cores; at least one). Largest first
(by the optimizer steps left), so the longest run does not start last.

Each child reads the run config the comparison resolved (written to ``jobs/<run>.yaml`` under
the compare directory) and writes its output to ``jobs/<run>.log``; the same config and threads
train the same weights as the comparison itself would at those threads. The comparison then
samples and scores as usual, loading what the children trained. A run whose training fails makes
its variant fail (the last lines of its log say why); the others go on. Ctrl-C or SIGTERM stops
the children (they keep what they finished; the same command continues), and on Linux a child
also stops when the comparison is killed outright.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
from pydantic import BaseModel

from stratagen import config as cfg
from stratagen.io import checkpoint
from stratagen.io.run import Run
from stratagen.registry import Registry

from ..build import build
from ..pipeline import settings_to_train
from ..reporting.logger import announce
from .plan import ComparePlan

#: seconds between two looks at the running children
POLL_SECONDS = 1.0


@dataclass
class TrainJob:
    """One run a comparison trains: ``label`` (variant and seed) names it in messages."""

    variants: list[str]
    label: str
    #: file name of its config and log under the work directory, e.g. ``StraIT-R-seed0``
    name: str
    config: BaseModel
    #: optimizer steps left to train (what the queue orders by)
    steps: int


def jobs_to_train(plan: ComparePlan, registry: Registry) -> list[TrainJob]:
    """Every run the comparison trains that has a component left to train, largest first.

    A run two variants train (the same ``config:``) is one job that names both.
    """
    jobs: dict[str, TrainJob] = {}
    for variant in plan.variants.values():
        if not variant.trains:
            continue
        for seed, run_config in variant.run_configs.items():
            key = os.path.normpath(os.path.abspath(run_config.run.dir))
            if key in jobs:
                jobs[key].variants.append(variant.name)
                continue
            steps = _steps_left(run_config, registry)
            if steps:
                label, name = ((variant.name, variant.name) if seed is None
                               else (f"{variant.name} seed {seed}", f"{variant.name}-seed{seed}"))
                jobs[key] = TrainJob([variant.name], label, name, run_config, steps)
    return sorted(jobs.values(), key=lambda job: -job.steps)


def _steps_left(run_config: BaseModel, registry: Registry) -> int:
    """Optimizer steps of the run's components without final weights (0: nothing to train)."""
    with torch.device("meta"):
        model = build(run_config, registry).model
    return sum(train.steps for _, train in settings_to_train(run_config, model, Run(run_config.run.dir)))


def train_in_processes(jobs: list[TrainJob], processes: int, work_dir: str) -> dict[str, str]:
    """Train ``jobs``, up to ``processes`` at once (see the module); returns ``{variant: why}`` for
    every variant whose run failed to train."""
    queue, running, failures = list(jobs), {}, {}
    if not jobs:
        return failures
    threads = max(1, torch.get_num_threads() // processes)
    os.makedirs(work_dir, exist_ok=True)
    announce(f"training {len(jobs)} run{'s' if len(jobs) > 1 else ''}, {min(processes, len(jobs))} at a time, "
             f"{threads} thread{'s' if threads > 1 else ''} each (logs in {work_dir})")
    try:
        while queue or running:
            while queue and len(running) < processes:
                job = queue.pop(0)
                running[job.label] = (job, _start(job, threads, work_dir), time.monotonic())
            time.sleep(POLL_SECONDS)
            for label, (job, child, started) in list(running.items()):
                if child.poll() is None:
                    continue
                del running[label]
                log = _log_path(job, work_dir)
                if child.returncode == 0:
                    announce(f"{label}: trained {job.config.run.dir} in {time.monotonic() - started:.0f} s")
                else:
                    why = f"training {job.config.run.dir} failed (exit {child.returncode}): {_last_line(log)} " \
                          f"(log: {log})"
                    announce(f"{label}: {why}")
                    failures.update({variant: why for variant in job.variants})
    finally:  # Ctrl-C, SIGTERM or an error here: the children stop too, keeping what they finished
        for _, child, _ in running.values():
            child.send_signal(signal.SIGTERM)
        for _, child, _ in running.values():
            child.wait()
    return failures


def _start(job: TrainJob, threads: int, work_dir: str) -> subprocess.Popen:
    config_path = _log_path(job, work_dir).removesuffix(".log") + ".yaml"
    checkpoint.write_bytes_atomic(config_path, cfg.dump_config(job.config).encode())
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    announce(f"{job.label}: training {job.config.run.dir} (log: {_log_path(job, work_dir)})")
    with open(_log_path(job, work_dir), "w") as log:
        return subprocess.Popen([sys.executable, "-m", "stratagen.cli", "train", config_path, "--resume"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_stop_with_parent if sys.platform == "linux" else None)


def _stop_with_parent() -> None:
    """In the child, before it runs: SIGTERM when the comparison's process dies (Linux prctl)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _log_path(job: TrainJob, work_dir: str) -> str:
    return os.path.join(work_dir, f"{job.name}.log")


def _last_line(path: str) -> str:
    with open(path, errors="replace") as f:
        lines = [line.strip() for line in f.read().replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
