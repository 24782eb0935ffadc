"""Build a run's components from its validated config, and refuse incompatible ones early."""
from __future__ import annotations

from typing import Any

import torch

from stratagen.nn import set_attention_backend
from stratagen.registry import (ConfigError, GenerativeModel, LevelSpec, PriorSlot, Registry, Sampler,
                                Tokenizer, get_registry, split_stream_key)


def dataset(config: Any, split: str, registry: Registry | None = None):
    """The run's dataset for ``split`` ("train" or "eval")."""
    return (registry or get_registry()).build("dataset", config.data, split=split)


def level_spec(tokenizers: dict[str, Tokenizer], stream: str, resolutions: dict[str, int], where: str) -> LevelSpec:
    """The LevelSpec of ``stream``; ConfigError naming ``where`` if it does not exist."""
    tokenizer_id, level = split_stream_key(stream)
    if tokenizer_id not in tokenizers:
        raise ConfigError(f"{where}: stream {stream!r} names tokenizer {tokenizer_id!r}; "
                          f"tokenizers: {', '.join(tokenizers)}")
    specs = {s.name: s for s in tokenizers[tokenizer_id].level_specs(resolutions[tokenizer_id])}
    if level not in specs:
        raise ConfigError(f"{where}: tokenizer {tokenizer_id!r} has no level {level!r}; levels: {', '.join(specs)}")
    return specs[level]


def build_model(config: Any, registry: Registry | None = None) -> GenerativeModel:
    """Tokenizers and priors of ``config``, initialised from ``run.seed`` (weights load separately)."""
    registry = registry or get_registry()
    try:
        set_attention_backend(config.run.attention)
    except ValueError as exc:
        raise ConfigError(f"run.attention: {exc}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.run.seed)
        return _build_model(config, registry)


def _build_model(config: Any, registry: Registry) -> GenerativeModel:
    resolution = config.data.resolution
    num_classes = config.data.num_classes
    resolutions = {tid: entry.resolution or resolution for tid, entry in config.tokenizers.items()}
    tokenizers: dict[str, Tokenizer] = {}
    for tid, entry in config.tokenizers.items():
        if entry.share is None:
            tokenizers[tid] = registry.build("tokenizer", entry.model, resolution=resolutions[tid])
        elif entry.share in tokenizers and config.tokenizers[entry.share].share is None:
            tokenizers[tid] = tokenizers[entry.share]
        else:
            raise ConfigError(f"tokenizers.{tid}.share: {entry.share!r} must be a tokenizer defined above it that "
                              f"does not share itself")
    priors = {}
    for pid, entry in config.priors.items():
        where = f"priors.{pid}"
        target = level_spec(tokenizers, entry.target, resolutions, f"{where}.target")
        conditions = [level_spec(tokenizers, c, resolutions, f"{where}.conditions") for c in entry.conditions]
        if entry.target in entry.conditions:
            raise ConfigError(f"{where}.conditions: a prior cannot be conditioned on its own target {entry.target!r}")
        prior = registry.build("prior", entry.model, target=target, conditions=conditions, num_classes=num_classes)
        priors[pid] = PriorSlot(prior, entry.target, tuple(entry.conditions))
    return GenerativeModel(tokenizers, priors, resolution, num_classes, resolutions)


def build_sampler(config: Any, model: GenerativeModel, registry: Registry | None = None,
                  sampler_config: Any = None) -> Sampler:
    """The configured sampler, checked against ``model`` (IncompatibleComponentsError says why)."""
    sampler_config = sampler_config or config.sampler
    if sampler_config is None:
        raise ConfigError("sampler: this config names no sampler")
    sampler = (registry or get_registry()).build("sampler", sampler_config)
    sampler.check(model)
    return sampler
