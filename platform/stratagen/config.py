"""Run configs: YAML files validated against a schema assembled from installed plugins.

A run config names its data, tokenizers, priors, sampler and training settings. Each
component section picks its implementation with ``name:`` and is validated by that
component's own pydantic model (discriminated unions on ``name``). A file may
``extends:`` a base file (paths relative to the file, or fsspec URLs) and override keys;
``--set a.b=value`` overrides any key from the command line, validated the same way.

Every mistake surfaces as a :class:`ConfigError` with one short line naming the file, the
key path, the bad value and what is accepted.
"""
from __future__ import annotations

import functools
import types
import typing
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal, Union

import fsspec
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from stratagen.registry import ConfigError, Registry, get_registry, split_stream_key

ID_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]*$"


class Strict(BaseModel):
    """Base for every engine config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class TrainSettings(Strict):
    """Optimisation of one component (StraIT Table 12 defaults for the priors)."""

    steps: int = Field(1000, ge=0, description="optimizer steps")
    batch_size: int = Field(32, ge=1, description="global batch size (split across processes)")
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


class PriorEntry(Strict):
    target: str = Field(description="the stream it generates: '<tokenizer id>.<level>'")
    conditions: list[str] = Field(default_factory=list, description="streams it attends to")
    mask_schedule: str = Field("cosine", description="schedule drawing training mask ratios")
    condition_augmentation: float = Field(
        0.0, ge=0, lt=1, description="StraIT Appendix C (Eq. 6): share of condition tokens masked and refilled "
                                     "by the prior that generates them; 0 (off) as in the paper")
    model: Any = Field(description="the prior plugin and its settings")
    train: TrainSettings = TrainSettings()

    @field_validator("target", "conditions")
    @classmethod
    def _streams(cls, value: Any) -> Any:
        for key in [value] if isinstance(value, str) else value:
            split_stream_key(key)
        return value

    @field_validator("mask_schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        names = get_registry().names("schedule")
        if value not in names:
            raise ValueError(f"unknown mask schedule {value!r}; installed: {', '.join(names)}")
        return value


class RunSettings(Strict):
    dir: str = Field(description="run directory: a local path or an fsspec URL")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    attention: Literal["sdpa", "xformers"] = Field(
        "sdpa", description="attention kernel: torch SDPA, or xformers (optional extra, CUDA only)")


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
def _eval_settings_model(registry: Registry) -> type[BaseModel]:
    metric = _union(registry, "metric")
    default = [registry.get("metric", "in-domain").config()] if "in-domain" in registry.names("metric") else []
    return create_model("EvalSettings", __base__=EvalSettingsBase,
                        metrics=(list[metric], Field(default_factory=lambda: list(default))))


@functools.cache
def _run_config_model(registry: Registry) -> type[BaseModel]:
    tokenizer = create_model("Tokenizer", __base__=TokenizerEntry, model=(_union(registry, "tokenizer") | None, None))
    prior = create_model("PriorSection", __base__=PriorEntry, model=(_union(registry, "prior"), ...))
    ids = Annotated[str, Field(pattern=ID_PATTERN)]
    return create_model(
        "RunConfig",
        __base__=Strict,
        run=(RunSettings, ...),
        data=(_union(registry, "dataset"), ...),
        tokenizers=(dict[ids, tokenizer], ...),
        priors=(dict[ids, prior], Field(default_factory=dict)),
        sampler=(_union(registry, "sampler") | None, None),
        eval=(_eval_settings_model(registry), Field(default_factory=_eval_settings_model(registry))),
    )


class VariantEntry(Strict):
    """One contender of a compare run: a run config or an existing run directory."""

    config: str | None = Field(None, description="run config (relative to the compare file), trained if needed")
    run: str | None = Field(None, description="an existing run directory")
    set: list[str] = Field(default_factory=list, description="overrides, as --set KEY=VALUE")

    @field_validator("run")
    @classmethod
    def _one_source(cls, value: str | None, info: Any) -> str | None:
        if (value is None) == (info.data.get("config") is None):
            raise ValueError("give exactly one of 'config' or 'run'")
        return value


class Sweeps(Strict):
    """Sampler settings varied one at a time around each variant's own sampler."""

    temperature: list[float] = Field(default_factory=list, description="sampling temperature, every level")
    steps: list[list[int]] = Field(default_factory=list, description="steps per level, e.g. [18, 6] (Table 7)")
    schedule: list[str] = Field(default_factory=list, description="mask schedule, every level (Table 10)")
    guidance: list[float] = Field(default_factory=list, description="classifier-free guidance scale, every level "
                                  "(Table 3)")


@functools.cache
def _compare_config_model(registry: Registry) -> type[BaseModel]:
    return create_model(
        "CompareConfig",
        __base__=Strict,
        dir=(str, Field(description="compare output directory (local)")),
        device=(Literal["auto", "cpu", "cuda"], "auto"),
        variants=(dict[Annotated[str, Field(pattern=ID_PATTERN)], VariantEntry], Field(min_length=1)),
        eval=(_eval_settings_model(registry), Field(default_factory=_eval_settings_model(registry))),
        sweeps=(Sweeps, Field(default_factory=Sweeps)),
        seeds=(list[int] | None, Field(None, min_length=1, description="sample (and score) every point once per "
                                       "seed; tables show mean and std (default: [eval.seed])")),
        train_per_seed=(bool, Field(False, description="also train every variant once per seed, into "
                                    "<run dir>-seed<s>")),
    )


def load_compare_config(url: str, overrides: list[str] | None = None, registry: Registry | None = None) -> BaseModel:
    """Read, merge, override and validate a compare config; variant paths resolve relative to it."""
    registry = registry or get_registry()
    data = apply_overrides(load_raw(url), overrides or [], url)
    model = _compare_config_model(registry)
    try:
        config = model.model_validate(data)
    except ValidationError as exc:
        tags = {c.name for c in registry.components()}
        raise ConfigError("\n".join(_format_error(model, url, e, tags) for e in exc.errors()[:5])) from None
    for variant in config.variants.values():
        if variant.config is not None:
            variant.config = _resolve_relative(url, variant.config)
    return config


def run_config_model(registry: Registry | None = None) -> type[BaseModel]:
    """The RunConfig pydantic model for the installed plugins."""
    return _run_config_model(registry or get_registry())


def json_schema(registry: Registry | None = None) -> dict[str, Any]:
    """JSON Schema of a run config, for editors."""
    return run_config_model(registry).model_json_schema()


# ----------------------------------------------------------------------------- files
def read_yaml(url: str) -> dict[str, Any]:
    """Read one YAML mapping from a path or fsspec URL; ConfigError if missing or malformed."""
    try:
        with fsspec.open(url, "r") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{url}: config file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{url}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{url}: a config must be a YAML mapping, got {type(data).__name__}")
    return data


def _resolve_relative(base_url: str, ref: str) -> str:
    if "://" in ref or ref.startswith("/"):
        return ref
    protocol, sep, path = base_url.rpartition("://")
    return f"{protocol}{sep}{PurePosixPath(path).parent / ref}"


def _same_schema(a: Any, b: Any) -> bool:
    """Whether components ``a`` and ``b`` share one config model (e.g. vqgan2-r and vqgan2-c)."""
    if a == b:
        return True
    registry = get_registry()
    return any(registry.get(kind, a).config is registry.get(kind, b).config
               for kind in ("tokenizer", "prior", "sampler", "dataset", "metric")
               if a in registry.names(kind) and b in registry.names(kind))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base``.

    A section whose ``name`` switches to a component with another config model is
    replaced, not merged (its old keys would not validate); ``section: null`` removes an
    inherited section (e.g. a prior the derived config does not have).
    """
    out = dict(base)
    for key, value in override.items():
        old = out.get(key)
        if value is None and isinstance(old, dict):
            del out[key]  # `section: null` removes an inherited section
        elif isinstance(old, dict) and isinstance(value, dict) and _same_schema(
                old.get("name"), value.get("name", old.get("name"))):
            out[key] = deep_merge(old, value)
        else:
            out[key] = value
    return out


def load_raw(url: str, _chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read ``url`` and the files it ``extends``, merged, as a plain dict."""
    if url in _chain:
        raise ConfigError(f"{url}: 'extends' forms a cycle: {' -> '.join(_chain + (url,))}")
    data = read_yaml(url)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{url}: extends: must be a file path, got {parent!r}")
    return deep_merge(load_raw(_resolve_relative(url, parent), _chain + (url,)), data)


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides; values are parsed as YAML (``3``, ``true``, ``[1,2]``).

    Setting a section's ``name`` to a component with another config model starts that
    section afresh (``--set sampler.name=maskgit`` swaps the sampler in one line);
    ``KEY=null`` on a section removes it.
    """
    for item in overrides:
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        last = parts[-1]
        if value is None and isinstance(node.get(last), dict):
            del node[last]  # like `section: null` in a file: removes the section
        else:
            if last == "name" and not _same_schema(node.get("name"), value):
                node.clear()  # another component with another schema: start its section afresh
            node[last] = value
    return data


# ----------------------------------------------------------------------------- errors
def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The keys accepted at ``loc`` (used to say what is accepted for an unknown key)."""
    annotation: Any = model
    for part in loc:
        while True:
            origin = typing.get_origin(annotation)
            if origin is Annotated:
                annotation = typing.get_args(annotation)[0]
            elif origin in (Union, types.UnionType):
                options = [a for a in typing.get_args(annotation) if a is not type(None)]
                tagged = [a for a in options if isinstance(a, type) and issubclass(a, BaseModel)
                          and part in getattr(a.model_fields.get("name"), "annotation", Any).__args__]
                if tagged:
                    annotation = tagged[0]
                    break
                annotation = options[0]
            else:
                break
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if part in annotation.model_fields:
                annotation = annotation.model_fields[part].annotation
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return None


def _format_error(model: type[BaseModel], source: str, error: dict[str, Any], tags: set[str]) -> str:
    loc = tuple(error["loc"])
    shown = [str(p) for i, p in enumerate(loc) if not (i > 0 and p in tags and isinstance(p, str))]
    path = ".".join(shown) or "(top level)"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        message = f"unknown key {loc[-1]!r}" + (f"; accepted: {', '.join(allowed)}" if allowed else "")
    elif error["type"] == "missing":
        message = "required key is missing"
    else:
        value = error.get("input")
        if not isinstance(value, (dict, list)) or len(repr(value)) < 60:
            message += f" (got {value!r})"
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    return f"{source}: {path}: {message}"


def validate(data: dict[str, Any], source: str, registry: Registry | None = None) -> BaseModel:
    """Validate a merged config dict; raise ConfigError with one line per problem (at most 5)."""
    registry = registry or get_registry()
    model = run_config_model(registry)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        tags = {c.name for c in registry.components()}
        lines = [_format_error(model, source, e, tags) for e in exc.errors()]
        more = f"\n(and {len(lines) - 5} more)" if len(lines) > 5 else ""
        raise ConfigError("\n".join(lines[:5]) + more) from None


def load_config(url: str, overrides: list[str] | None = None, registry: Registry | None = None) -> BaseModel:
    """Read, merge (``extends``), override (``--set``) and validate a run config."""
    data = apply_overrides(load_raw(url), overrides or [], url)
    return validate(data, url, registry)


def dump_config(config: BaseModel) -> str:
    """The fully resolved config (defaults included) as YAML."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
