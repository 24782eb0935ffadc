"""Training a comparison's runs side by side, each in a process of its own (``train_jobs: N``).

A comparison trains its runs one after another in its own process by default. A second CPU thread
speeds a small run up by less than 2x (1.7x for the medium StraIT-R run on 2 cores, where two runs
side by side train 14% more runs per hour: ``benchmarks/bench_train_jobs.py``), so with
``train_jobs: N`` every run with something left to train is trained by ``stratagen train
<config> --resume`` in a child process, up to N at once, each with ``T // N`` intra-op threads
(T: this process's threads, ``OMP_NUM_THREADS`` or the cores; at least one), whatever the number
of runs still queued: a run's weights depend on its thread count, so it must not depend on the
order in which the runs end. The runs whose unfinished components have the most optimizer steps
start first, so the longest does not start last. On a GPU the children share the comparison's
device (their threads matter little there).

Each child reads the run config the comparison resolved (written to ``jobs/<name>.yaml`` under
the compare directory, ``<name>`` being the variant, ``-seed<s>`` added with ``train_per_seed``)
and appends its output to ``jobs/<name>.log``; the same config and threads train the same weights
as the comparison itself would at those threads. The comparison then samples and scores as usual,
loading what the children trained. A run whose training fails makes its variants fail (the last
line of its log says why); the others go on. Ctrl-C or SIGTERM stops the children (they keep what
they finished; the same command continues), and on Linux a child also stops when the comparison is
killed outright.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from pydantic import BaseModel

from stratagen import config as cfg
from stratagen.io import checkpoint
from stratagen.io.run import Run
from stratagen.registry import Registry

from ..build import build
from ..pipeline import settings_to_train
from ..reporting.logger import announce
from .plan import ComparePlan, run_key

#: seconds between two looks at the running children
POLL_SECONDS = 1.0
#: seconds a stopped child has to end before it is killed
STOP_SECONDS = 60.0


@dataclass
class TrainJob:
    """One run a comparison trains: ``label`` (variant and seed) names it in messages."""

    variants: list[str]
    label: str
    #: file name of its config and log under the work directory, e.g. ``StraIT-R-seed0``
    name: str
    config: BaseModel
    #: optimizer steps of its unfinished components (what the queue orders by)
    steps: int


def jobs_to_train(plan: ComparePlan, registry: Registry | None = None) -> list[TrainJob]:
    """Every run the comparison trains that has a component left to train, largest first.

    A run two variants train (the same ``config:``) is one job that names both.
    """
    jobs: dict[str, TrainJob] = {}
    for variant in plan.variants.values():
        if not variant.trains:
            continue
        for seed, run_config in variant.run_configs.items():
            key = run_key(run_config.run.dir)
            if key in jobs:
                jobs[key].variants.append(variant.name)
                continue
            steps = _steps_left(run_config, registry)
            if steps:
                label, name = ((variant.name, variant.name) if seed is None
                               else (f"{variant.name} seed {seed}", f"{variant.name}-seed{seed}"))
                jobs[key] = TrainJob([variant.name], label, name, run_config, steps)
    return sorted(jobs.values(), key=lambda job: -job.steps)


def _steps_left(run_config: BaseModel, registry: Registry | None) -> int:
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
                try:
                    running[job.label] = (job, _start(job, threads, work_dir), time.monotonic())
                except OSError as exc:  # its config or log cannot be written: this run fails, not the others
                    why = f"training {job.config.run.dir} could not start: {exc.strerror or exc} ({exc.filename})"
                    _fail(job, why, failures)
            time.sleep(POLL_SECONDS)
            for label, (job, child, started) in list(running.items()):
                if child.poll() is None:
                    continue
                del running[label]
                log = _job_file(job, work_dir, ".log")
                if child.returncode == 0:
                    announce(f"{label}: trained {job.config.run.dir} in {time.monotonic() - started:.0f} s")
                else:
                    how = (f"exit {child.returncode}" if child.returncode > 0
                           else f"killed by signal {-child.returncode}")
                    why = f"training {job.config.run.dir} failed ({how}): {_last_line(log)} (log: {log})"
                    _fail(job, why, failures)
    finally:  # Ctrl-C, SIGTERM or an error here: the children stop too, keeping what they finished
        for _, child, _ in running.values():
            child.send_signal(signal.SIGTERM)
        for _, child, _ in running.values():
            try:
                child.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:  # stuck in a long call: what it did not save is lost anyway
                child.kill()
                child.wait()
    return failures


def _fail(job: TrainJob, why: str, failures: dict[str, str]) -> None:
    """Says why ``job`` failed and fails its variants; a variant two of whose runs (seeds) failed names both."""
    announce(f"{job.label}: {why}")
    for variant in job.variants:
        failures[variant] = f"{failures[variant]}; {why}" if variant in failures else why


def _start(job: TrainJob, threads: int, work_dir: str) -> subprocess.Popen:
    config_path, log_path = _job_file(job, work_dir, ".yaml"), _job_file(job, work_dir, ".log")
    checkpoint.write_bytes_atomic(config_path, cfg.dump_config(job.config).encode())
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = [sys.executable, "-m", "stratagen.cli", "train", config_path, "--resume"]
    announce(f"{job.label}: training {job.config.run.dir} (log: {log_path})")
    with open(log_path, "a") as log:  # a continued comparison keeps the earlier output
        log.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')}: OMP_NUM_THREADS={threads} {' '.join(command[1:])}\n")
        log.flush()
        # a session of its own: Ctrl-C reaches the comparison alone, which then stops its children
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, preexec_fn=_stop_with_parent())


def _stop_with_parent() -> Callable[[], None] | None:
    """What the child runs before the command so that it gets SIGTERM when the comparison's process
    dies (Linux ``prctl(PR_SET_PDEATHSIG)``; None elsewhere). The C function is looked up here, in the
    parent: between fork and exec the child must not load libraries."""
    if sys.platform != "linux":
        return None
    prctl, pr_set_pdeathsig, sigterm, parent = ctypes.CDLL(None).prctl, 1, int(signal.SIGTERM), os.getpid()

    def stop_with_parent() -> None:
        prctl(pr_set_pdeathsig, sigterm)
        if os.getppid() != parent:  # the comparison died before the request: nobody will signal it
            os._exit(143)

    return stop_with_parent


def _job_file(job: TrainJob, work_dir: str, suffix: str) -> str:
    """The job's config (``.yaml``) or log (``.log``) under the work directory."""
    return os.path.join(work_dir, job.name + suffix)


def _last_line(path: str) -> str:
    """The child's last line of output, without the ``error: `` the CLI starts it with (the message it
    goes into already says that the training failed)."""
    with open(path, errors="replace") as f:
        lines = [line.strip() for line in f.read().replace("\r", "\n").splitlines()
                 if line.strip() and not line.startswith("== ")]  # not the headers _start writes
    return lines[-1].removeprefix("error: ") if lines else "no output"
