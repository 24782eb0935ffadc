"""A comparison resolved and checked as a whole before any work (``stratagen compare --check``).

:func:`plan_comparison` resolves every variant's run config (a ``config:`` as it will be trained,
once per seed with ``train_per_seed``; a ``run:`` from its saved config, or from the config of the
earlier variant that trains it), builds every variant's components on the ``meta`` device (no
memory, no weights) and checks against them the configured sampler and every sweep point (a
``critic`` order needs a critic, a steps list one value per stage), checks that an existing run
holds the trained weights sampling needs, that ``eval.classes`` exist in every variant, and builds
the metrics (a missing weights file is refused here). The first problem is one ConfigError naming
the variant and key; nothing is trained, sampled or written. ``compare`` runs the same checks first.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel

from stratagen.io.run import Run
from stratagen.registry import ConfigError, Registry, SamplerConfig, StratagenError, get_registry

from ..build import BuiltRun, build, build_metrics, build_sampler
from ..devices.processes import launched_processes
from ..evaluation.evaluate import sample_labels
from ..pipeline import load_config
from ..training.resume import check_unchanged


@dataclass
class VariantPlan:
    """One variant, resolved.

    Attributes:
        source: what it comes from, e.g. ``config configs/demo/strait_r.yaml`` or ``run runs/demo/x``.
        trains: whether the comparison trains it (a ``config:``) or only loads a run.
        run_configs: its run config per training seed (``train_per_seed``), else ``{None: config}``.
        trained_by: for a ``run:`` that an earlier variant trains, that variant.
        points: ``(sweep, value label, sampler config)`` per sweep point, the default first.
    """

    name: str
    source: str
    trains: bool
    run_configs: dict[int | None, BaseModel]
    trained_by: str | None = None
    points: list[tuple[str, str, BaseModel]] = field(default_factory=list)
    #: images sampled per sweep point and seed
    images: int = 0


@dataclass
class ComparePlan:
    config: BaseModel
    seeds: list[int]
    variants: dict[str, VariantPlan]
    metrics: list[tuple[str, Any]] = field(default_factory=list)

    def summary(self, source: str) -> str:
        """What the comparison will do, as ``stratagen compare --check`` prints it."""
        config = self.config
        training = ("one model per variant and seed (train_per_seed)" if config.train_per_seed
                    else "one model per variant")
        if config.train_jobs > 1:
            training += f", up to {config.train_jobs} trained at once (train_jobs)"
        lines = [f"{source}: the comparison is valid (checked without training, sampling or writing anything)",
                 f"  output: {config.dir}",
                 f"  sampling seeds: {self.seeds}; trained models: {training}",
                 f"  metrics: {', '.join(name for name, _ in self.metrics) or 'none'}"]
        width = max(len(name) for name in self.variants)
        total = 0
        for plan in self.variants.values():
            dirs = sorted({c.run.dir for c in plan.run_configs.values()})
            if plan.trains:
                state = "trains what is missing in " + ", ".join(dirs)
            elif plan.trained_by:
                state = f"trained by {plan.trained_by}" + (f": reads {', '.join(dirs)}" if len(dirs) > 1 else "")
            else:
                state = "trained"
            sampler = next(iter(plan.run_configs.values())).sampler.name
            total += plan.images * len(plan.points) * len(self.seeds)
            lines.append(f"  {plan.name:<{width}}  {plan.source} ({state}); sampler {sampler}, "
                         f"{len(plan.points)} sweep point{'s' if len(plan.points) > 1 else ''} x "
                         f"{len(self.seeds)} seed{'s' if len(self.seeds) > 1 else ''} x {plan.images} images")
        lines.append(f"  images to sample and score: {total:,}")
        return "\n".join(lines)


def sampling_seeds(config: BaseModel) -> list[int]:
    """The seeds every sweep point is sampled and scored with: ``seeds``, else ``[eval.seed]``."""
    return list(config.seeds or [config.eval.seed])


def variant_sweeps(config: BaseModel, variant: Any) -> dict[str, list[Any]]:
    """The variant's own sweeps if it has any, else the compare config's."""
    return config.sweeps if variant.sweeps is None else variant.sweeps


def sweep_points(sampler: BaseModel, sweeps: dict[str, list[Any]]) -> list[tuple[str, str, BaseModel]]:
    """``(sweep, value label, sampler config)``: the default point, then one setting at a time.

    Sweeps are stage settings (:class:`stratagen.registry.StageSettings`) the sampler declares
    sweepable; a value applies to every stage, a list gives one value per stage (``steps:
    [[18, 6]]``). ConfigError if the sampler cannot take a value.
    """
    points = [("default", "-", sampler)]
    for setting, values in sweeps.items():
        if not isinstance(sampler, SamplerConfig):
            raise ConfigError(f"sweeps: sampler {sampler.name!r} has no stage settings to sweep")
        for value in values:
            label = "+".join(map(str, value)) if isinstance(value, list) else f"{value:g}" if isinstance(
                value, float) else str(value)
            points.append((setting, label, sampler.with_setting(setting, value)))
    return points


def variant_configs(config: BaseModel, name: str, variant: Any, registry: Registry, seeds: list[int] | None = None,
                    source: tuple[str, list[str]] | None = None) -> dict[int | None, BaseModel]:
    """The variant's run config with the comparison's device: ``{None: config}``, or with ``seeds`` one
    per-seed twin per seed (``run.seed``, ``<run dir>-seed<s>``). ``source``: ``(config file or run
    directory, overrides)`` to read it from instead of the variant's own."""
    path, overrides = source or (variant.config or variant.run, variant.set)
    try:
        run_config = load_config(path, overrides, registry)
    except StratagenError as exc:
        raise ConfigError(f"variant {name}: {exc}") from None
    device = {} if config.device == "auto" else {"device": config.device}
    out = {}
    for seed in seeds or [None]:
        update = dict(device)
        if seed is not None:
            update |= {"seed": seed, "dir": f"{run_config.run.dir.rstrip('/')}-seed{seed}"}
        out[seed] = run_config.model_copy(update={"run": run_config.run.model_copy(update=update)})
    return out


def resolve_variants(config: BaseModel, registry: Registry | None = None) -> dict[str, VariantPlan]:
    """Every variant's run config(s), resolved as the comparison will use them (no sweep points yet).

    A ``run:`` that does not exist must be trained by an earlier ``config:`` variant (the one whose
    ``run.dir`` it names): it is then resolved from that variant's config and overrides plus its own
    (with ``train_per_seed``, once per seed, reading ``<run>-seed<s>``, and only such a run).
    """
    registry = registry or get_registry()
    seeds = sampling_seeds(config) if config.train_per_seed else None
    trained_here: dict[str, str] = {}  # run directory -> the variant that trains it
    variants = {}
    for name, variant in config.variants.items():
        trained_by = None
        if variant.config is not None:
            run_configs = variant_configs(config, name, variant, registry, seeds)
            for seed, run_config in run_configs.items():
                trained_here.setdefault(run_key(run_config.run.dir.removesuffix(f"-seed{seed}")), name)
        else:
            trained_by = trained_here.get(run_key(variant.run))
            trainer = config.variants[trained_by] if trained_by else None
            if trainer is None and seeds is not None:
                raise ConfigError(f"variant {name}: train_per_seed trains every variant once per seed, but no "
                                  f"variant before it trains run {variant.run}; give it a `config:` or set "
                                  f"train_per_seed: false")
            if trainer is None and not Run(variant.run).exists():
                raise ConfigError(f"variant {name}: run {variant.run} does not exist (no config.yaml) and no "
                                  f"variant before it trains it; train it first or give the variant a `config:`")
            source = (trainer.config, [*trainer.set, *variant.set]) if trainer else None
            run_configs = variant_configs(config, name, variant, registry, seeds, source)
        source = f"config {variant.config}" if variant.config else f"run {variant.run}"
        variants[name] = VariantPlan(name, source, variant.config is not None, run_configs, trained_by)
    return variants


def plan_comparison(config: BaseModel, registry: Registry | None = None) -> ComparePlan:
    """Every variant, sweep point, seed and metric of a validated compare config, checked (see the module)."""
    registry = registry or get_registry()
    if config.train_jobs > 1 and launched_processes() > 1:
        raise ConfigError(f"train_jobs: {config.train_jobs} trains runs side by side in processes of its own, which "
                          f"torchrun's {launched_processes()} processes cannot share; under torchrun set "
                          f"train_jobs: 1 (every process trains each run together)")
    if os.path.exists(config.dir) and not os.path.isdir(config.dir):
        raise ConfigError(f"dir: {config.dir} is a file; give a directory for the comparison's results (it is "
                          f"created if missing)")
    variants = resolve_variants(config, registry)
    if config.train_jobs > 1:
        _check_shared_with_children(variants)
    for plan in variants.values():
        variant = config.variants[plan.name]
        run_config = next(iter(plan.run_configs.values()))
        plan.points = _check_variant(config, plan.name, variant, run_config, registry,
                                     check_weights=not plan.trains and plan.trained_by is None)
        for each in plan.run_configs.values():
            _check_trained_with(plan.name, each, registry)
        plan.images = len(sample_labels(run_config.data.num_classes, config.eval))
    return ComparePlan(config, sampling_seeds(config), variants,
                       build_metrics(config.eval, registry))


def _check_variant(config: BaseModel, name: str, variant: Any, run_config: BaseModel, registry: Registry,
                   check_weights: bool) -> list[tuple[str, str, BaseModel]]:
    """The variant's sweep points, each sampler checked against its components built on ``meta``."""
    try:
        if run_config.sampler is None:
            raise ConfigError("its run config names no sampler")
        points = sweep_points(run_config.sampler, variant_sweeps(config, variant))
        with torch.device("meta"):
            built = build(run_config, registry)
    except StratagenError as exc:
        raise ConfigError(f"variant {name}: {exc}") from None
    for sweep, value, sampler_config in points[1:]:
        try:
            build_sampler(sampler_config, built.model, registry)
        except StratagenError as exc:
            raise ConfigError(f"variant {name}: sweeps.{sweep} = {value}: {exc}") from None
    classes = config.eval.classes or []
    if any(not 0 <= c < run_config.data.num_classes for c in classes):
        raise ConfigError(f"eval.classes: {classes} do not all exist in variant {name}, whose data has "
                          f"{run_config.data.num_classes} classes (0 to {run_config.data.num_classes - 1})")
    if check_weights:
        _check_trained(name, variant.run, built)
    return points


def _check_shared_with_children(variants: dict[str, VariantPlan]) -> None:
    """``train_jobs`` trains in child processes: a ``memory://`` run would vanish with its child."""
    for plan in (p for p in variants.values() if p.trains):
        for run_config in plan.run_configs.values():
            if run_config.run.dir.startswith("memory://"):
                raise ConfigError(f"variant {plan.name}: run.dir {run_config.run.dir} lives in this process's "
                                  f"memory, which the processes that train_jobs trains in do not share; give it a "
                                  f"directory or a bucket URL, or set train_jobs: 1")


def _components(built: BuiltRun) -> list[tuple[str, str]]:
    """(kind, id) of every component of a run that has weights of its own."""
    model = built.model
    return ([("tokenizer", tid) for tid in model.tokenizers if model.owns_weights(tid)]
            + [("prior", pid) for pid in model.priors] + [("critic", cid) for cid in model.critics])


def _check_trained_with(name: str, run_config: BaseModel, registry: Registry) -> None:
    """A variant whose run directory already holds trained components must not change what they were
    trained with (its ``set:`` on a ``run:``, or a ``config:`` that changed since): their weights would
    not fit, or would be resumed from another recipe."""
    run = Run(run_config.run.dir)
    if not run.exists():
        return
    with torch.device("meta"):
        built = build(run_config, registry)
    trained = [(kind, cid) for kind, cid in _components(built) if run.trained_step(kind, cid) is not None]
    check_unchanged(run, run_config, trained, action=f"variant {name} reads this run")


def _check_trained(name: str, run_dir: str, built: BuiltRun) -> None:
    """Every component of an existing run that sampling loads has its trained weights."""
    run = Run(run_dir)
    for kind, cid in _components(built):
        if run.trained_step(kind, cid) is None:
            raise ConfigError(f"variant {name}: run {run_dir} has no trained {kind} {cid!r} "
                              f"({run.component_url(kind, cid)}); finish it with `stratagen train {run_dir} "
                              f"--resume` first")


def run_key(path: str) -> str:
    """One name per run directory, however it is written (relative, with ``..``, or a URL)."""
    return os.path.normpath(os.path.abspath(path)) if "://" not in path else path.rstrip("/")
