"""The Python API behind every CLI verb.

::

    from stratagen.api import Pipeline
    pipe = Pipeline.from_run("runs/maskgit_f16_demo")
    images = pipe.sample(classes=[0, 1, 2], seed=0).images     # [3, 3, H, W] in [-1, 1]
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import torch
from pydantic import BaseModel

from stratagen import config as cfg
from stratagen.engine import build
from stratagen.engine import train as training
from stratagen.engine.distributed import setup_processes
from stratagen.engine.logger import RunLogger
from stratagen.engine.tokenize import tokenize
from stratagen.io.run import Run
from stratagen.registry import GenerativeModel, Registry, Sampler, SampleOutput, StratagenError, get_registry

log = logging.getLogger("stratagen")


def load(source: str, overrides: Sequence[str] = (), registry: Registry | None = None) -> BaseModel:
    """A validated run config from a config file or a run directory."""
    if source.endswith((".yaml", ".yml")):
        return cfg.load_config(source, list(overrides), registry)
    return Run(source).load_config(list(overrides), registry)


def resolve_device(setting: str) -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


class Pipeline:
    """A run's model (tokenizers and priors) with its sampler, ready to generate."""

    def __init__(self, config: BaseModel, model: GenerativeModel, run: Run, device: torch.device,
                 registry: Registry | None = None):
        self.config = config
        self.model = model
        self.run = run
        self.device = device
        self.registry = registry or get_registry()

    @classmethod
    def from_run(cls, source: str, overrides: Sequence[str] = (), device: str | None = None,
                 registry: Registry | None = None) -> "Pipeline":
        """Load a trained run (directory, or the config that names it) with its weights."""
        return cls.from_config(load(source, overrides, registry), device, registry)

    @classmethod
    def from_config(cls, config: BaseModel, device: str | None = None,
                    registry: Registry | None = None) -> "Pipeline":
        """The trained run ``config.run.dir`` names, built from the validated ``config``."""
        model = build.build_model(config, registry)
        run = Run(config.run.dir)
        target = resolve_device(device or config.run.device)
        for tid, tokenizer in model.tokenizers.items():
            if config.tokenizers[tid].share is None:
                run.load_weights("tokenizer", tid, tokenizer, registry)
            tokenizer.to(target).eval()
        for pid, slot in model.priors.items():
            run.load_weights("prior", pid, slot.prior, registry)
            slot.prior.to(target).eval()
        return cls(config, model, run, target, registry)

    def sampler(self, sampler_config: Any = None) -> Sampler:
        """The configured sampler (or ``sampler_config``), checked against the model."""
        return build.build_sampler(self.config, self.model, self.registry, sampler_config)

    def sample(self, classes: Sequence[int], seed: int = 0, sampler: Sampler | None = None,
               canvas: Mapping[str, torch.Tensor] | None = None) -> SampleOutput:
        """Generate one image per entry of ``classes``; same seed, same images."""
        labels = torch.as_tensor(list(classes), dtype=torch.long, device=self.device)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.model.num_classes):
            raise StratagenError(f"classes must be in [0, {self.model.num_classes}), got {list(classes)}")
        generator = torch.Generator(self.device).manual_seed(seed)
        return (sampler or self.sampler()).sample(self.model, labels, generator, canvas)


def train(config: BaseModel, resume: bool = False, registry: Registry | None = None) -> Run:
    """Run every stage the config declares: tokenizers, token cache, priors, a final sample grid.

    Components whose final checkpoint exists are loaded, not retrained; ``resume``
    continues interrupted components from their last checkpoint.
    """
    registry = registry or get_registry()
    procs = setup_processes(config.run.device)
    run = Run(config.run.dir)
    if not resume and _has_checkpoints(run, config):
        raise StratagenError(f"{run.url} already holds checkpoints; pass --resume to continue it, "
                             f"or choose another run.dir")
    model = build.build_model(config, registry)
    if config.sampler is not None:
        build.build_sampler(config, model, registry)  # refuse an incompatible sampler before any work
    if procs.is_main:
        run.save_config(config)
    logger = RunLogger(run.local_path("tb") if procs.is_main and run.is_local else None)
    train_data = build.dataset(config, "train", registry)
    try:
        for tid, tokenizer in model.tokenizers.items():
            tokenizer.to(procs.device)
            if config.tokenizers[tid].share is not None:
                pass  # the very module of the tokenizer it shares, already trained above
            elif run.trained_step("tokenizer", tid) == config.tokenizers[tid].train.steps:
                run.load_weights("tokenizer", tid, tokenizer, registry)
            else:
                training.train_tokenizer(run, config, tid, tokenizer, train_data, procs, logger, resume, registry)
            tokenizer.eval()
            if config.priors:
                tokenize(run, config, tid, tokenizer, train_data, "train", procs, model.resolution_of(tid))
        pipeline = Pipeline(config, model, run, procs.device, registry)
        last = list(model.priors)[-1] if model.priors else None
        for pid, slot in model.priors.items():
            slot.prior.to(procs.device)
            if run.trained_step("prior", pid) == config.priors[pid].train.steps:
                run.load_weights("prior", pid, slot.prior, registry)
                continue
            on_images = None
            if pid == last and config.sampler is not None:
                def on_images(step: int) -> None:
                    _log_samples(pipeline, logger, step)
            training.train_prior(run, config, pid, model, procs, logger, on_images, resume, registry)
    finally:
        logger.close()
    if procs.is_main and run.is_local:
        from stratagen.engine.figures import loss_curves

        loss_curves(run.local_path("tb"), run.local_path("plots"))
    return run


def _has_checkpoints(run: Run, config: BaseModel) -> bool:
    kinds = [("tokenizer", t) for t, e in config.tokenizers.items() if e.share is None]
    kinds += [("prior", p) for p in config.priors]
    return any(run.trained_step(kind, cid) is not None for kind, cid in kinds)


def _log_samples(pipeline: Pipeline, logger: RunLogger, step: int) -> None:
    """One sample per class (at most 16) into TensorBoard, with a fixed seed."""
    for slot in pipeline.model.priors.values():
        slot.prior.eval()
    classes = list(range(min(pipeline.model.num_classes, 16)))
    images = pipeline.sample(classes, seed=0).images
    logger.images("samples", images, step, nrow=len(classes))
    for slot in pipeline.model.priors.values():
        slot.prior.train()
