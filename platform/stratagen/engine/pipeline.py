"""A built run with its weights on a device, ready to generate; and training, which returns one.

::

    pipe = Pipeline.from_run("runs/demo/maskgit_f16")
    images = pipe.sample(classes=[0, 1, 2], seed=0).images     # [3, 3, H, W] in [-1, 1]
"""
from __future__ import annotations

import contextlib
from typing import Any, Mapping, Sequence

import torch
from pydantic import BaseModel

from stratagen import config as cfg
from stratagen.io.run import Run
from stratagen.registry import (GenerativeModel, IncompatibleComponentsError, Registry, Sampler, SampleOutput,
                                StratagenError, get_registry)

from .build import BuiltRun, build
from .devices.gather import on_main
from .devices.precision import InferenceNetworks, autocast, inference_dtype
from .devices.processes import launched_processes, per_rank_batch, setup_processes
from .reporting.figures import loss_curves
from .reporting.logger import RunLogger, announce
from .training import train as training
from .training.plan import training_plan
from .training.resume import check_unchanged, extends_record, keep_records
from .training.tokenize import tokenize


def load_config(source: str, overrides: Sequence[str] = (), registry: Registry | None = None) -> BaseModel:
    """A validated run config from a config file or a run directory."""
    if source.endswith((".yaml", ".yml")):
        return cfg.load_config(source, list(overrides), registry)
    return Run(source).load_config(list(overrides), registry)


def resolve_device(setting: str) -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


class Pipeline:
    """A run's built components with their trained weights, on ``device``."""

    def __init__(self, built: BuiltRun, run: Run, device: torch.device):
        self.built = built
        self.run = run
        self.device = device
        #: what sampling computes in (``run.inference_dtype`` on this device)
        self.dtype = inference_dtype(built.config.run.inference_dtype, device)
        #: the priors and critics sampling runs: copies in ``dtype``; the trained weights stay float32
        self.networks = InferenceNetworks(self.dtype, device)

    @property
    def config(self) -> BaseModel:
        return self.built.config

    @property
    def model(self) -> GenerativeModel:
        return self.built.model

    @property
    def registry(self) -> Registry:
        return self.built.registry

    @classmethod
    def from_run(cls, source: str, overrides: Sequence[str] = (), device: str | None = None,
                 registry: Registry | None = None, tokenizers_only: bool = False) -> "Pipeline":
        """Load a trained run (directory, or the config that names it) with its weights."""
        return cls.from_config(load_config(source, overrides, registry), device, registry, tokenizers_only)

    @classmethod
    def from_config(cls, config: BaseModel, device: str | None = None,
                    registry: Registry | None = None, tokenizers_only: bool = False) -> "Pipeline":
        """The trained run ``config.run.dir`` names, built once from the validated ``config``; with
        ``tokenizers_only`` only the tokenizers' weights are loaded (to tokenize before the priors
        are trained)."""
        built = build(config, registry)
        run = Run(config.run.dir)
        model = built.model
        for tid, tokenizer in model.tokenizers.items():
            if model.owns_weights(tid):
                run.load_weights("tokenizer", tid, tokenizer, config.tokenizers[tid].model.name, built.registry)
        if tokenizers_only:
            return cls(built, run, resolve_device(device or config.run.device)).ready()
        for pid, slot in model.priors.items():
            run.load_weights("prior", pid, slot.prior, config.priors[pid].model.name, built.registry)
        for cid, slot in model.critics.items():
            run.load_weights("critic", cid, slot.critic, config.critics[cid].model.name, built.registry)
        return cls(built, run, resolve_device(device or config.run.device)).ready()

    def ready(self) -> "Pipeline":
        """Every module on the device, in evaluation mode, and the inference copies of the priors and
        critics made (see :class:`stratagen.engine.devices.precision.InferenceNetworks`)."""
        for module in self.built.modules():
            module.to(self.device).eval()
        self.networks.model(self.model)
        return self

    def sampler(self, sampler_config: Any = None) -> Sampler:
        """The configured sampler (or one from ``sampler_config``), checked against the model."""
        return self.built.sampler_for(sampler_config)

    def sample(self, classes: Sequence[int], seed: int = 0, sampler: Sampler | None = None,
               canvas: Mapping[str, torch.Tensor] | None = None, captions: Sequence[str] | None = None
               ) -> SampleOutput:
        """Generate one image per entry of ``classes``; same seed, same images. ``captions`` (one per
        entry; text-conditioned runs only, e.g. STAR) condition the images instead of the classes'.
        The priors and critics run as their inference copies (``self.networks``), without gradients."""
        labels = torch.as_tensor(list(classes), dtype=torch.long, device=self.device)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.model.num_classes):
            raise StratagenError(f"classes must be in [0, {self.model.num_classes}), got {list(classes)}")
        sampler = sampler or self.sampler()
        text = {}
        if captions is not None:
            if len(captions) != len(labels):
                raise StratagenError(f"give one caption per image: {len(captions)} captions, {len(labels)} classes")
            try:
                sampler.check_captions(self.model)
            except IncompatibleComponentsError as exc:
                raise IncompatibleComponentsError(f"sampler {self.config.sampler.name!r}: {exc}") from None
            text = {"captions": list(captions)}
        generator = torch.Generator(self.device).manual_seed(seed)
        with torch.no_grad(), autocast(self.device, self.dtype):
            output = sampler.sample(self.networks.model(self.model), labels, generator, canvas, **text)
        output.images = output.images.float()
        return output


def train(config: BaseModel, resume: bool = False, registry: Registry | None = None,
          label: str | None = None) -> Pipeline:
    """Run every stage of the training plan (see :mod:`stratagen.engine.training.plan`) and return the trained pipeline.

    Components whose final weights exist are loaded, not retrained; ``resume`` continues
    interrupted components from their last checkpoint. The returned pipeline holds the very
    modules trained here: sampling needs no rebuild and no reload. With ``label`` (a comparison's
    variant and seed), a run with anything left to train is announced as ``<label>: training <run>``.
    """
    registry = registry or get_registry()
    built = build(config, registry)  # refuses an incompatible sampler before any work
    model = built.model
    run = Run(config.run.dir)
    to_train = settings_to_train(config, model, run)
    for key, settings in to_train:  # before any process joins a group
        per_rank_batch(settings, launched_processes(), key)
    procs = setup_processes(config.run.device)
    with contextlib.ExitStack() as hold:  # one trainer per run: rank 0 holds it, and a refusal stops every rank
        on_main(procs, lambda: hold.enter_context(run.training()))  # (a compare stays in step)
        if label and to_train and procs.is_main:
            announce(f"{label}: training {config.run.dir}")
        trained = _trained(run, model)
        if trained and not resume:
            raise StratagenError(f"{run.url} already holds checkpoints; pass --resume to continue it, "
                                 f"or choose another run.dir")
        check_unchanged(run, config, trained)
        if procs.is_main:
            run.prepare()
            keep_records(run)
            run.save_config(config)
        logger = RunLogger(run.local_path("tb") if procs.is_main and run.is_local else None)
        pipeline = Pipeline(built, run, procs.device)
        augmented = frozenset(pid for pid, e in config.priors.items() if e.condition_augmentation > 0)
        plan = training_plan(model, augmented)
        last_sampled = next((s.key for s in reversed(plan) if s.kind in ("prior", "critic")), None)
        try:
            for stage in plan:
                _run_stage(stage.kind, stage.cid, pipeline, procs, logger, resume,
                           on_images=_sample_logger(pipeline, logger) if stage.key == last_sampled else None)
        finally:
            logger.close()
        if procs.is_main and run.is_local:
            loss_curves(run.local_path("tb"), run.local_path("plots"))
        return pipeline.ready()


def _run_stage(kind: str, cid: str, pipeline: Pipeline, procs: Any, logger: RunLogger, resume: bool,
               on_images: Any) -> None:
    built, run, config, model = pipeline.built, pipeline.run, pipeline.config, pipeline.model
    if kind == "tokens":  # completes or rebuilds a cache unless a complete one of the same fingerprint exists
        tokenizer = model.tokenizers[cid].to(procs.device).eval()
        tokenize(run, config, cid, tokenizer, built.dataset("train"), "train", procs, model.resolution_of(cid))
        return
    entry = getattr(config, f"{kind}s")[cid]
    module = {"tokenizer": lambda: model.tokenizers[cid], "prior": lambda: model.priors[cid].prior,
              "critic": lambda: model.critics[cid].critic}[kind]().to(procs.device)
    if run.finished(kind, cid, entry.train.steps):
        run.load_weights(kind, cid, module, entry.model.name, built.registry)
        module.eval()
        return
    if procs.is_main and (not (run.started(kind, cid) and run.trained_with(kind, cid))
                          or extends_record(run, config, kind, cid)):
        run.save_config(config, kind, cid)  # what --resume checks this component against (see .resume)
    if kind == "tokenizer":
        training.train_tokenizer(run, config, cid, module, built.dataset("train"), procs, logger, resume,
                                 built.registry)
    else:
        training.train_on_tokens(run, config, kind, cid, model, built.schedules[cid], procs, logger, on_images,
                                 resume, built.registry)
    module.eval()


def _components(model: GenerativeModel) -> list[tuple[str, str]]:
    """(kind, id) of every component with weights of its own."""
    kinds = [("tokenizer", t) for t in model.tokenizers if model.owns_weights(t)]
    return kinds + [("prior", p) for p in model.priors] + [("critic", c) for c in model.critics]


def _trained(run: Run, model: GenerativeModel) -> list[tuple[str, str]]:
    """The components of which ``run`` holds weights (finished or not)."""
    return [(kind, cid) for kind, cid in _components(model) if run.trained_step(kind, cid) is not None]


def settings_to_train(config: BaseModel, model: GenerativeModel, run: Run) -> list[tuple[str, Any]]:
    """(config key, training settings) of every component still to train (finished ones are loaded)."""
    settings = [(kind, cid, getattr(config, f"{kind}s")[cid].train) for kind, cid in _components(model)]
    return [(f"{kind}s.{cid}.train", train) for kind, cid, train in settings
            if not run.finished(kind, cid, train.steps)]


def _sample_logger(pipeline: Pipeline, logger: RunLogger):
    """A callback that logs one sample per class (at most 16) to TensorBoard, with a fixed seed."""
    if pipeline.built.sampler is None:
        return None

    def log_samples(step: int) -> None:
        modes = {module: module.training for module in pipeline.built.modules()}
        for module in modes:
            module.eval()
        classes = list(range(min(pipeline.model.num_classes, 16)))
        images = pipeline.sample(classes, seed=0).images
        logger.images("samples", images, step, nrow=len(classes))
        for module, training_mode in modes.items():
            module.train(training_mode)

    return log_samples
