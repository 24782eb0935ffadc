"""What every staged sampler shares with the engine: per-stage settings, and sweeps over them.

A staged sampler decodes token streams one after another (MaskGIT: one stream; StraIT:
top then bottom). Its config holds one :class:`StageSettings` section per stage; the
sections are found by type, in declaration order. A comparison may sweep any setting the
sampler declares in ``SamplerConfig.sweepable``; every swept value is validated by the
same rules as the config itself, when the sweep is read.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from .configs import ComponentConfig
from .errors import ConfigError


def check_name(kind: str, value: str) -> str:
    """``value`` if it names an installed component of ``kind``, else ValueError saying why: unknown
    (listing the installed ones), or ambiguous (naming both providers)."""
    from .errors import StratagenError
    from .manager import get_registry  # the registry imports this module's config models

    try:
        get_registry().get(kind, value)
    except StratagenError as exc:
        raise ValueError(str(exc)) from None
    return value


class StageSettings(ComponentConfig):
    """Decoding settings of one stage (one token stream)."""

    steps: int = Field(12, ge=1, description="decoding steps T")
    schedule: str = Field("cosine", description="mask schedule gamma (StraIT Table 10)")
    order: str = Field("confidence", description="decode order: which sampled tokens each step keeps "
                                                 "(confidence, random, halton, critic, or a plugin's)")
    temperature: float = Field(1.0, gt=0, description="softmax temperature of token sampling")
    choice_temperature: float = Field(4.5, ge=0, description="scale of the annealed Gumbel noise on the "
                                                             "order's scores (MaskGIT's quality knob)")
    top_k: int = Field(0, ge=0, description="sample among the k most likely tokens only (0: all)")
    top_p: float = Field(1.0, gt=0, le=1, description="sample within the smallest set of tokens whose "
                                                      "probability reaches p (nucleus; 1: all)")
    guidance_scale: float = Field(0.0, ge=0, description="classifier-free guidance scale (0: off)")
    guidance_schedule: Literal["constant", "linear", "var"] = Field(
        "constant", description="constant scale; linear: scale * t / T at step t = 1 .. T; var: VAR's ramp, "
                                "scale * t / (T - 1) at step t = 0 .. T - 1 (0 at the first step)")

    def guidance_at(self, step: int, steps: int) -> float:
        """The guidance scale at step ``step`` (0-based) of ``steps`` under ``guidance_schedule``
        (``var`` with one step: the scale)."""
        if self.guidance_schedule == "linear":
            return self.guidance_scale * (step + 1) / steps
        if self.guidance_schedule == "var" and steps > 1:
            return self.guidance_scale * step / (steps - 1)
        return self.guidance_scale

    @field_validator("schedule")
    @classmethod
    def _known_schedule(cls, value: str) -> str:
        return check_name("schedule", value)

    @field_validator("order")
    @classmethod
    def _known_order(cls, value: str) -> str:
        return check_name("order", value)


@dataclass(frozen=True)
class Stage:
    """One stage of a staged sampler: the stream it decodes and how."""

    stream: str
    settings: StageSettings


class SamplerConfig(ComponentConfig):
    """Base of a staged sampler's config: its :class:`StageSettings` fields are its stages."""

    #: settings a comparison may sweep (subclasses may narrow it)
    sweepable: ClassVar[tuple[str, ...]] = tuple(StageSettings.model_fields)

    def stage_names(self) -> list[str]:
        """Names of the stage sections, in declaration order (``stage``, or ``top``, ``bottom``, ...)."""
        return [name for name in type(self).model_fields if isinstance(getattr(self, name), StageSettings)]

    def with_setting(self, setting: str, value: Any) -> "SamplerConfig":
        """A copy with ``setting`` set to ``value`` in every stage, or to ``value[i]`` in stage ``i``
        when ``value`` is a list. ConfigError if the setting is not sweepable, the list length is
        not the number of stages, or a value breaks the setting's rules."""
        names = self.stage_names()
        if setting not in self.sweepable:
            raise ConfigError(f"sampler {self.name!r} cannot sweep {setting!r}; sweepable: {', '.join(self.sweepable)}")
        values = value if isinstance(value, list) else [value] * len(names)
        if len(values) != len(names):
            raise ConfigError(f"{setting} {value}: sampler {self.name!r} has {len(names)} stages "
                              f"({', '.join(names)}); give {len(names)} values")
        update = {n: validate_stage_value(getattr(self, n), setting, v) for n, v in zip(names, values)}
        return self.model_copy(update=update)


def validate_stage_value(stage: StageSettings, setting: str, value: Any) -> StageSettings:
    """``stage`` with ``setting = value``, validated; ConfigError saying what is accepted."""
    if setting not in StageSettings.model_fields:
        raise ConfigError(f"unknown stage setting {setting!r}; settings: {', '.join(StageSettings.model_fields)}")
    try:
        return StageSettings.model_validate({**stage.model_dump(), setting: value})
    except ValidationError as exc:
        error = exc.errors()[0]
        message = error["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{setting} = {value!r}: {message}") from None


def check_sweep_values(setting: str, values: list[Any]) -> None:
    """Validate every value of a sweep against :class:`StageSettings`' rules (ConfigError if not)."""
    default = StageSettings()
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            validate_stage_value(default, setting, item)


def stage_settings_of(config: BaseModel) -> list[StageSettings]:
    """The stage sections of a sampler config (empty for a sampler that is not staged)."""
    if isinstance(config, SamplerConfig):
        return [getattr(config, n) for n in config.stage_names()]
    return []
