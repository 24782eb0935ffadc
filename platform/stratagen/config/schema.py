"""The run-config schema, assembled from the installed plugins' config models.

A run config names its data, tokenizers, priors, critics, sampler and training settings.
Each component section picks its implementation with ``name:`` and is validated by that
component's own pydantic model (discriminated unions on ``name``). Every mistake surfaces
as a :class:`ConfigError` with one short line naming the file, the key path, the bad value
and what is accepted.
"""
from __future__ import annotations

import functools
from typing import Annotated, Any, Literal, Union

import fsspec
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from stratagen.registry import ConfigError, Registry, StratagenError, get_registry, split_stream_key
from stratagen.registry.sampling import check_name

from .errors import format_error
from .files import apply_overrides, load_raw

ID_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]*$"


class Strict(BaseModel):
    """Base for every engine config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class TrainSettings(Strict):
    """Optimisation of one component (StraIT Table 12 defaults for the priors)."""

    steps: int = Field(1000, ge=0, description="optimizer steps")
    batch_size: int = Field(32, ge=1, description="global batch size (split across processes and micro-batches)")
    accumulate: int = Field(1, ge=1, description="micro-batches per process per step (gradient accumulation): "
                                                 "each process computes batch_size / (processes x accumulate) "
                                                 "samples at a time")
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="under torchrun: ddp (whole model per process) or fsdp (FSDP2, sharded per block; "
                           "priors and critics)")
    checkpoint_activations: bool = Field(False, description="recompute each block's activations in the backward "
                                                            "pass instead of storing them (less memory, ~1/3 more "
                                                            "compute)")
    compile: bool = Field(False, description="torch.compile each block for training")
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.96)
    weight_decay: float = Field(0.045, ge=0)
    warmup_steps: int = Field(5000, ge=0)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float | None = Field(3.0, gt=0)
    log_every: int = Field(50, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    image_every: int = Field(0, ge=0, description="log reconstructions / samples every N steps (0: only at the end)")


class TokenizerEntry(Strict):
    model: Any = Field(None, description="the tokenizer plugin and its settings")
    resolution: int | None = Field(None, ge=8, description="image size this tokenizer works at (default: "
                                   "data.resolution); images are resized bilinearly, antialiased")
    share: str | None = Field(None, description="use the model and weights of this other tokenizer id (not "
                              "trained here): one tokenizer at two resolutions, e.g. the 256 -> 512 upsampler")

    @model_validator(mode="after")
    def _model_or_share(self) -> "TokenizerEntry":
        if (self.model is None) == (self.share is None):
            raise ValueError("give exactly one of 'model' or 'share'")
        return self
    train: TrainSettings = TrainSettings(optimizer="adam", lr=1e-4, betas=(0.5, 0.9), weight_decay=0.0,
                                         warmup_steps=0, lr_schedule="constant", grad_clip=None)

    @field_validator("train")
    @classmethod
    def _replicated(cls, train: TrainSettings) -> TrainSettings:
        if train.parallel == "fsdp":
            raise ValueError("parallel: fsdp shards priors and critics; tokenizers train with ddp")
        return train


class LoaderSettings(Strict):
    """How images and cached tokens reach training."""

    workers: int | None = Field(None, ge=0, description="DataLoader worker processes per training process "
                                "(default: up to 4 beside a GPU; on a CPU none below 4 cores)")
    views: int = Field(8, ge=1, description="augmented views of each image in the token cache (view 0: centre "
                       "crop); priors draw one per epoch. 1 when the dataset does not augment")


class TokenModelEntry(Strict):
    """What every component trained on the token cache shares (priors, critics)."""

    mask_schedule: str = Field("cosine", description="schedule drawing training mask ratios")
    train: TrainSettings = TrainSettings()

    @field_validator("mask_schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        return check_name("schedule", value)


class PriorEntry(TokenModelEntry):
    target: str = Field(description="the stream it generates: '<tokenizer id>.<level>'")
    conditions: list[str] = Field(default_factory=list, description="streams it attends to")
    condition_augmentation: float = Field(
        0.0, ge=0, lt=1, description="StraIT Appendix C (Eq. 6): share of condition tokens masked and refilled "
                                     "by the prior that generates them; 0 (off) as in the paper")
    model: Any = Field(description="the prior plugin and its settings")

    @field_validator("target", "conditions")
    @classmethod
    def _streams(cls, value: Any) -> Any:
        for key in [value] if isinstance(value, str) else value:
            split_stream_key(key)
        return value


class CriticEntry(TokenModelEntry):
    prior: str = Field(description="id of the prior whose samples the critic learns to tell from real tokens")
    model: Any = Field(description="the critic plugin and its settings")


class RunSettings(Strict):
    dir: str = Field(description="run directory: a local path or an fsspec URL")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    attention: Literal["sdpa", "xformers"] = Field(
        "sdpa", description="attention kernel: torch SDPA, or xformers (optional extra, CUDA only)")
    inference_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="floating-point type of sampling and evaluation: bf16 autocast where the device "
                            "multiplies bf16 natively (auto), or always float32 / bfloat16")

    @field_validator("dir")
    @classmethod
    def _known_protocol(cls, value: str) -> str:
        protocol = value.split("://", 1)[0] if "://" in value else "file"
        try:
            fsspec.get_filesystem_class(protocol)
        except ValueError:
            raise ValueError(f"unknown protocol {protocol!r}; a local path or an fsspec URL "
                             f"(file://, memory://, s3://, gs://, ...)") from None
        except ImportError as exc:  # fsspec names the package, e.g. "Install s3fs to access S3"
            raise ValueError(f"{protocol}:// needs a package: {exc}") from None
        return value


def _union(registry: Registry, kind: str) -> Any:
    models = registry.config_models(kind)
    if not models:
        raise ConfigError(f"no {kind} plugin is installed")
    if len(models) == 1:
        return models[0]
    return Annotated[Union[tuple(models)], Field(discriminator="name")]


class EvalSettingsBase(Strict):
    """How samples are drawn and scored (``stratagen eval``, ``stratagen compare``)."""

    samples_per_class: int = Field(10, ge=1)
    classes: list[int] | None = Field(None, description="classes to sample (default: all)")
    seed: int = 0
    batch_size: int = Field(64, ge=1, description="images generated per sampler call")


@functools.cache
def eval_settings_model(registry: Registry) -> type[BaseModel]:
    metric = _union(registry, "metric")
    default = [registry.get("metric", "in-domain").config()] if "in-domain" in registry.names("metric") else []
    return create_model("EvalSettings", __base__=EvalSettingsBase,
                        metrics=(list[metric], Field(default_factory=lambda: list(default))))


@functools.cache
def _run_config_model(registry: Registry) -> type[BaseModel]:
    tokenizer = create_model("Tokenizer", __base__=TokenizerEntry, model=(_union(registry, "tokenizer") | None, None))
    prior = create_model("PriorSection", __base__=PriorEntry, model=(_union(registry, "prior"), ...))
    critic = create_model("CriticSection", __base__=CriticEntry, model=(_union(registry, "critic"), ...))
    ids = Annotated[str, Field(pattern=ID_PATTERN)]
    return create_model(
        "RunConfig",
        __base__=Strict,
        run=(RunSettings, ...),
        data=(_union(registry, "dataset"), ...),
        loader=(LoaderSettings, Field(default_factory=LoaderSettings)),
        tokenizers=(dict[ids, tokenizer], ...),
        priors=(dict[ids, prior], Field(default_factory=dict)),
        critics=(dict[ids, critic], Field(default_factory=dict)),
        sampler=(_union(registry, "sampler") | None, None),
        eval=(eval_settings_model(registry), Field(default_factory=eval_settings_model(registry))),
    )


def run_config_model(registry: Registry | None = None) -> type[BaseModel]:
    """The RunConfig pydantic model for the installed plugins."""
    return _run_config_model(registry or get_registry())


def json_schema(registry: Registry | None = None) -> dict[str, Any]:
    """JSON Schema of a run config, for editors."""
    return run_config_model(registry).model_json_schema()


def validate(data: dict[str, Any], source: str, registry: Registry | None = None) -> BaseModel:
    """Validate a merged config dict; raise ConfigError with one line per problem (at most 5)."""
    registry = registry or get_registry()
    model = run_config_model(registry)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        tags = {c.name for c in registry.components()}
        lines = [_ambiguous(registry, source, e) or format_error(model, source, e, tags) for e in exc.errors()]
        more = f"\n(and {len(lines) - 5} more)" if len(lines) > 5 else ""
        raise ConfigError("\n".join(lines[:5]) + more) from None


def _ambiguous(registry: Registry, source: str, error: dict[str, Any]) -> str | None:
    """The line for a component name two plugins provide (ambiguous, not unknown), else None."""
    tag = error.get("ctx", {}).get("tag") if error["type"] == "union_tag_invalid" else None
    for component in registry.components():
        if component.name == tag and tag not in registry.names(component.kind):
            try:
                registry.get(component.kind, tag)
            except StratagenError as ambiguous:
                return f"{source}: {'.'.join(map(str, error['loc']))}: {ambiguous}"
    return None


def load_config(url: str, overrides: list[str] | None = None, registry: Registry | None = None) -> BaseModel:
    """Read, merge (``extends``), override (``--set``) and validate a run config."""
    data = apply_overrides(load_raw(url), overrides or [], url)
    return validate(data, url, registry)


def dump_config(config: BaseModel) -> str:
    """The fully resolved config (defaults included) as YAML."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
