"""Compare configs: the variants of a side-by-side run, its evaluation, and sampler sweeps."""
from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator

from stratagen.registry import ConfigError, Registry, StageSettings, check_sweep_values, get_registry

from .errors import format_error
from .files import apply_overrides, load_raw, resolve_relative
from .schema import ID_PATTERN, Strict, eval_settings_model


def _check_sweeps(cls: type, sweeps: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
    """Every key a stage setting, every value valid for it (a list: one value per stage)."""
    for setting, values in (sweeps or {}).items():
        if setting not in StageSettings.model_fields:
            raise ValueError(f"unknown sweep {setting!r}; stage settings: {', '.join(StageSettings.model_fields)}")
        if not values:
            raise ValueError(f"sweep {setting!r} has no values; give at least one, or remove it")
        try:
            check_sweep_values(setting, values)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    return sweeps


class VariantEntry(Strict):
    """One contender of a compare run: a run config or an existing run directory."""

    config: str | None = Field(None, description="run config (relative to the compare file), trained if needed")
    run: str | None = Field(None, description="an existing run directory")
    set: list[str] = Field(default_factory=list, description="overrides, as --set KEY=VALUE")
    sweeps: dict[str, list[Any]] | None = Field(None, description="this variant's sweeps, instead of the "
                                                "compare config's (e.g. none of the per-stage ones for a "
                                                "one-stage sampler)")

    _sweeps = field_validator("sweeps")(_check_sweeps)

    @model_validator(mode="after")
    def _one_source(self) -> "VariantEntry":
        if (self.run is None) == (self.config is None):
            raise ValueError("give exactly one of 'config' or 'run'")
        return self


def _distinct_seeds(cls: type, seeds: list[int] | None) -> list[int] | None:
    """A repeated seed samples the same images twice: the spread shrinks and ties turn into verdicts."""
    repeated = sorted({s for s in seeds or [] if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"seed {', '.join(map(str, repeated))} appears more than once; give distinct "
                         "seeds (a repeated seed samples the same images and shrinks the spread)")
    return seeds


@functools.cache
def _compare_config_model(registry: Registry) -> type[BaseModel]:
    return create_model(
        "CompareConfig",
        __base__=Strict,
        __validators__={"check_sweeps": field_validator("sweeps")(_check_sweeps),
                        "distinct_seeds": field_validator("seeds")(_distinct_seeds)},
        dir=(str, Field(description="compare output directory (local)")),
        device=(Literal["auto", "cpu", "cuda"], "auto"),
        variants=(dict[Annotated[str, Field(pattern=ID_PATTERN)], VariantEntry], Field(min_length=1)),
        eval=(eval_settings_model(registry), Field(default_factory=eval_settings_model(registry))),
        sweeps=(dict[str, list[Any]], Field(
            default_factory=dict, description="stage setting -> values, varied one at a time around each "
            "variant's own sampler (a value that is a list gives one value per stage, e.g. steps: [[18, 6]])")),
        seeds=(list[int] | None, Field(None, min_length=1, description="sample (and score) every point once per "
                                       "seed; tables show mean and std (default: [eval.seed])")),
        train_per_seed=(bool, Field(False, description="also train every variant once per seed, into "
                                    "<run dir>-seed<s> (a run: variant reads the per-seed runs of the variant "
                                    "before it that trains its run)")),
        train_jobs=(int, Field(1, ge=1, description="train up to this many of the comparison's runs at once, "
                               "each in a process of its own with an equal share of the threads (one machine; "
                               "not under torchrun)")),
    )


def is_compare_config(url: str) -> bool:
    """Whether the file at ``url`` (with what it extends) is a compare config: it has ``variants``."""
    return "variants" in load_raw(url)


def load_compare_config(url: str, overrides: list[str] | None = None, registry: Registry | None = None) -> BaseModel:
    """Read, merge, override and validate a compare config; variant paths resolve relative to it."""
    registry = registry or get_registry()
    data = apply_overrides(load_raw(url), overrides or [], url)
    model = _compare_config_model(registry)
    try:
        config = model.model_validate(data)
    except ValidationError as exc:
        tags = {c.name for c in registry.components()}
        raise ConfigError("\n".join(format_error(model, url, e, tags) for e in exc.errors()[:5])) from None
    for variant in config.variants.values():
        if variant.config is not None:
            variant.config = resolve_relative(url, variant.config)
    return config
