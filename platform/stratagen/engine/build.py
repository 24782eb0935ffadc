"""The one place that turns a validated run config into components, and refuses incompatible ones early.

:func:`build` creates every component of a run once: tokenizers (with sharing and
per-tokenizer resolutions), priors, critics, their training mask schedules and the
sampler (checked against the model). Datasets and metrics are built on first use and
kept. Training, sampling, evaluation, editing and benchmarking all work from the
returned :class:`BuiltRun`; none of them reads component wiring from the config again.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel

from stratagen.nn import set_attention_backend
from stratagen.registry import (ConfigError, CriticSlot, GenerativeModel, IncompatibleComponentsError, LevelSpec,
                                MaskSchedule, PriorSlot, Registry, Sampler, Tokenizer, get_registry, resolve_level,
                                split_stream_key)


log = logging.getLogger(__name__)

@dataclass
class BuiltRun:
    """Every component of one run, built from its config.

    Attributes:
        config: the validated run config.
        model: tokenizers, priors and critics, with sharing, resolutions and streams.
        sampler: the configured sampler, already checked against ``model`` (None if the
            config names none).
        schedules: per prior or critic id, the mask schedule drawing its training mask ratios.
    """

    config: BaseModel
    model: GenerativeModel
    sampler: Sampler | None
    schedules: dict[str, MaskSchedule]
    registry: Registry
    _datasets: dict[str, Any] = field(default_factory=dict, repr=False)

    def dataset(self, split: str) -> Any:
        """The run's dataset for ``split`` ("train" or "eval"), built once."""
        if split not in self._datasets:
            self._datasets[split] = self.registry.build("dataset", self.config.data, split=split)
        return self._datasets[split]

    def sampler_for(self, sampler_config: BaseModel | None) -> Sampler:
        """The run's sampler, or one built from ``sampler_config`` and checked against the model."""
        if sampler_config is None:
            if self.sampler is None:
                raise ConfigError("sampler: this config names no sampler")
            return self.sampler
        return build_sampler(sampler_config, self.model, self.registry)

    def modules(self) -> list[torch.nn.Module]:
        """Every distinct trainable module (a shared tokenizer once)."""
        found = [*self.model.tokenizers.values(), *(s.prior for s in self.model.priors.values()),
                 *(s.critic for s in self.model.critics.values())]
        return list({id(m): m for m in found}.values())


def build(config: BaseModel, registry: Registry | None = None) -> BuiltRun:
    """Every component of ``config``, initialised from ``run.seed`` (weights load separately)."""
    registry = registry or get_registry()
    try:
        set_attention_backend(config.run.attention)
    except ValueError as exc:
        raise ConfigError(f"run.attention: {exc}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.run.seed)
        model = _build_model(config, registry)
    schedules = {cid: registry.build("schedule", entry.mask_schedule)
                 for cid, entry in [*config.priors.items(), *config.critics.items()]}
    sampler = build_sampler(config.sampler, model, registry) if config.sampler is not None else None
    return BuiltRun(config, model, sampler, schedules, registry)


def build_sampler(sampler_config: BaseModel, model: GenerativeModel, registry: Registry | None = None) -> Sampler:
    """A sampler from its config, checked against ``model`` (IncompatibleComponentsError says why),
    including every stage's decode order (a ``critic`` order needs a critic of that stream)."""
    sampler = (registry or get_registry()).build("sampler", sampler_config)
    sampler.check(model)
    for stage in sampler.stages(model):
        if stage.settings.order == "critic":
            model.critic_for(stage.stream)
        priors = [slot.prior for slot in model.priors.values() if slot.target == stage.stream]
        if stage.settings.guidance_scale > 0 and priors and all(p.class_dropout == 0 for p in priors):
            _say_untrained_guidance(stage.stream)
    return sampler


@functools.cache
def _say_untrained_guidance(stream: str) -> None:
    """Said once per stream and process: a config may sample a run with guidance on purpose."""
    log.warning("%s: guidance_scale > 0 but its prior trained with class_dropout 0 (its unconditional logits "
                "are untrained); set priors.<id>.model.class_dropout (Table 12: 0.1) to train for guidance", stream)


def build_metrics(settings: Any, registry: Registry | None = None) -> list[tuple[str, Any]]:
    """The metrics of an ``eval`` section, as ``(name, metric)``."""
    registry = registry or get_registry()
    return [(m.name, registry.build("metric", m)) for m in settings.metrics]


def _level_spec(tokenizers: dict[str, Tokenizer], stream: str, resolutions: dict[str, int], where: str) -> LevelSpec:
    """The LevelSpec of ``stream``; ConfigError naming ``where`` if it does not exist."""
    tokenizer_id, level = split_stream_key(stream)
    if tokenizer_id not in tokenizers:
        raise ConfigError(f"{where}: stream {stream!r} names tokenizer {tokenizer_id!r}; "
                          f"tokenizers: {', '.join(tokenizers)}")
    try:
        return resolve_level(tokenizers[tokenizer_id].level_specs(resolutions[tokenizer_id]), level)
    except ValueError as exc:
        raise ConfigError(f"{where}: tokenizer {tokenizer_id!r}: {exc}") from None


def _build(registry: Registry, kind: str, model: Any, where: str, **wiring: Any) -> Any:
    """``registry.build``; a component refusing its settings (a ValueError: heads that do not
    divide the width, a resolution its factor does not divide) is a ConfigError naming ``where``."""
    try:
        return registry.build(kind, model, **wiring)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _build_model(config: Any, registry: Registry) -> GenerativeModel:
    resolution = config.data.resolution
    num_classes = config.data.num_classes
    resolutions = {tid: entry.resolution or resolution for tid, entry in config.tokenizers.items()}
    tokenizers: dict[str, Tokenizer] = {}
    shared: dict[str, str] = {}
    for tid, entry in config.tokenizers.items():
        if entry.share is None:
            tokenizers[tid] = _build(registry, "tokenizer", entry.model, f"tokenizers.{tid}.model",
                                     resolution=resolutions[tid])
        elif entry.share in tokenizers and entry.share not in shared:
            tokenizers[tid] = tokenizers[entry.share]
            shared[tid] = entry.share
        else:
            raise ConfigError(f"tokenizers.{tid}.share: {entry.share!r} must be a tokenizer defined above it that "
                              f"does not share itself")
    priors = {}
    for pid, entry in config.priors.items():
        where = f"priors.{pid}"
        target = _level_spec(tokenizers, entry.target, resolutions, f"{where}.target")
        conditions = [_level_spec(tokenizers, c, resolutions, f"{where}.conditions") for c in entry.conditions]
        if entry.target in entry.conditions:
            raise ConfigError(f"{where}.conditions: a prior cannot be conditioned on its own target {entry.target!r}")
        prior = _build(registry, "prior", entry.model, f"{where}.model", target=target, conditions=conditions,
                       num_classes=num_classes)
        try:
            prior.use_tokenizer(tokenizers[split_stream_key(entry.target)[0]])
        except IncompatibleComponentsError as exc:
            raise IncompatibleComponentsError(f"{where}: {exc}") from None
        priors[pid] = PriorSlot(prior, entry.target, tuple(entry.conditions))
    critics = {}
    for cid, entry in config.critics.items():
        if entry.prior not in priors:
            raise ConfigError(f"critics.{cid}.prior: {entry.prior!r} is not a prior of this run; "
                              f"priors: {', '.join(priors) or 'none'}")
        slot = priors[entry.prior]
        critic = _build(registry, "critic", entry.model, f"critics.{cid}.model", target=slot.prior.target,
                        conditions=slot.prior.conditions, num_classes=num_classes, prior=slot.prior)
        critics[cid] = CriticSlot(critic, entry.prior, slot.target, slot.conditions)
    return GenerativeModel(tokenizers, priors, resolution, num_classes, resolutions, shared, critics)
