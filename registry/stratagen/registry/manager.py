"""The plugin manager: discovers entry points, collects components, builds them.

Built-in components arrive through the same ``stratagen`` entry-point group that a
third-party distribution uses. Entry points load one at a time, so a plugin that fails
to import is recorded (name, distribution, version, error) while the others load.

Environment variables:
    STRATAGEN_DISABLE_PLUGINS   comma-separated entry-point names not to load
    STRATAGEN_PLUGINS           comma-separated allow-list: load only these
                                (a name no installed entry point has is an error in both)
    STRATAGEN_STRICT_PLUGINS=1  any load failure or duplicate name is fatal (for CI)
"""
from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, Mapping

import pluggy
from pydantic import BaseModel

from . import hookspecs
from .errors import PluginLoadError, StratagenError, UnknownComponentError

ENTRY_POINT_GROUP = "stratagen"
KINDS = tuple(hookspecs.KIND_HOOKS)


@dataclass(frozen=True)
class Provider:
    """Where a component came from: entry-point name, distribution and its version."""

    plugin: str
    distribution: str
    version: str

    def __str__(self) -> str:
        return f"{self.distribution} {self.version} (plugin {self.plugin!r})"


@dataclass(frozen=True)
class Component:
    """A registered component: how to build it and how its config is validated."""

    kind: str
    name: str
    factory: Callable[..., Any]
    config: type[BaseModel] | None
    provider: Provider
    #: config fields that make the component tiny (for conformance tests and quick trials)
    tiny: Mapping[str, Any] = field(default_factory=dict)

    def tiny_config(self) -> BaseModel | None:
        """The config with its ``tiny`` settings over the defaults (None for config-less components)."""
        return None if self.config is None else self.config.model_validate({"name": self.name, **self.tiny})


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or registered, and why."""

    provider: Provider
    error: str


def _env_list(env: Mapping[str, str], key: str) -> set[str] | None:
    raw = env.get(key, "").strip()
    return {x.strip() for x in raw.split(",") if x.strip()} if raw else None


class Registry:
    """Components of every kind, collected from plugins through pluggy hooks."""

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._components: dict[tuple[str, str], list[Component]] = {}
        self.failures: list[PluginFailure] = []
        self.strict = False

    # ------------------------------------------------------------------ loading
    def load_entry_points(self, env: Mapping[str, str] | None = None) -> "Registry":
        """Load every entry point of the ``stratagen`` group, one by one."""
        env = os.environ if env is None else env
        blocked = _env_list(env, "STRATAGEN_DISABLE_PLUGINS") or set()
        allowed = _env_list(env, "STRATAGEN_PLUGINS")
        self.strict = env.get("STRATAGEN_STRICT_PLUGINS", "") not in ("", "0", "false")
        found = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
        for key, names in (("STRATAGEN_DISABLE_PLUGINS", blocked), ("STRATAGEN_PLUGINS", allowed or set())):
            unknown = sorted(names - {ep.name for ep in found})
            if unknown:
                raise PluginLoadError(f"{key}: no installed plugin is named {', '.join(map(repr, unknown))}; "
                                      f"installed: {', '.join(sorted({ep.name for ep in found}))}")
        seen: dict[str, Provider] = {}
        for ep in found:
            if ep.name in blocked or (allowed is not None and ep.name not in allowed):
                continue
            dist = ep.dist
            provider = Provider(ep.name, dist.name if dist else "?", dist.version if dist else "?")
            if ep.name in seen:
                if seen[ep.name].distribution != provider.distribution:
                    self._fail(provider, StratagenError(
                        f"entry point {ep.name!r} is declared by both {seen[ep.name]} and {provider}; "
                        f"rename one of them"))
                continue
            seen[ep.name] = provider
            try:
                module = ep.load()
            except Exception as exc:  # any import error of a plugin is reported, not raised
                self._fail(provider, exc)
                continue
            self.register_plugin(module, provider)
        return self

    def register_plugin(self, plugin: object, provider: Provider) -> None:
        """Register one plugin object (module or instance) and collect its components.

        Registration is all-or-nothing per plugin: if any hook raises, none of that
        plugin's components are kept and the failure is recorded.
        """
        try:
            self._pm.register(plugin, name=provider.plugin)
        except Exception as exc:
            self._fail(provider, exc)
            return
        collected: list[Component] = []
        try:
            for kind, hook_name in hookspecs.KIND_HOOKS.items():
                for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
                    if impl.plugin_name == provider.plugin:
                        impl.function(register=self._collector(kind, provider, collected))
        except Exception as exc:
            self._pm.unregister(name=provider.plugin)
            self._fail(provider, exc)
            return
        for component in collected:
            self._components.setdefault((component.kind, component.name), []).append(component)
        for component in collected:
            others = self._components[(component.kind, component.name)]
            if len(others) > 1:
                self._fail(provider, StratagenError(
                    f"{component.kind} {component.name!r} is provided by both "
                    f"{others[0].provider} and {provider}; uninstall or block one "
                    f"(STRATAGEN_DISABLE_PLUGINS)"))

    def _collector(self, kind: str, provider: Provider, out: list[Component]) -> Callable[..., None]:
        def register(name: str, factory: Callable[..., Any], config: type[BaseModel] | None = None,
                     tiny: Mapping[str, Any] | None = None) -> None:
            if config is not None:
                tags = getattr(config.model_fields.get("name"), "annotation", None)
                if name not in getattr(tags, "__args__", ()):
                    raise ValueError(f"config {config.__name__} of {kind} {name!r} needs name: Literal[{name!r}, ...]")
            out.append(Component(kind, name, factory, config, provider, dict(tiny or {})))
        return register

    def _fail(self, provider: Provider, exc: BaseException) -> None:
        if isinstance(exc, StratagenError):
            message = str(exc)
        else:
            last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
            where = f" ({last[0].filename}:{last[0].lineno})" if last else ""
            message = f"{type(exc).__name__}: {exc}{where}"
        failure = PluginFailure(provider, message)
        self.failures.append(failure)
        if self.strict:
            raise PluginLoadError(f"plugin {provider} failed to load: {message}")

    # ------------------------------------------------------------------ lookup
    def names(self, kind: str) -> list[str]:
        """Sorted names of the usable components of ``kind`` (ambiguous names are not usable)."""
        return sorted(name for (k, name), found in self._components.items() if k == kind and len(found) == 1)

    def components(self, kind: str | None = None) -> list[Component]:
        """Every registered component (all providers of ambiguous names included)."""
        return [c for (k, _), found in sorted(self._components.items()) for c in found if kind in (None, k)]

    def get(self, kind: str, name: str) -> Component:
        """The component ``name`` of ``kind``; a clear error if unknown or ambiguous."""
        found = self._components.get((kind, name), [])
        if not found:
            raise UnknownComponentError(
                f"unknown {kind} {name!r}; installed: {', '.join(self.names(kind)) or 'none'}")
        if len(found) > 1:
            raise UnknownComponentError(
                f"{kind} {name!r} is ambiguous: provided by both {found[0].provider} and {found[1].provider}")
        return found[0]

    def config_models(self, kind: str) -> list[type[BaseModel]]:
        """The distinct config models of ``kind``, in name order."""
        models: list[type[BaseModel]] = []
        for name in self.names(kind):
            model = self.get(kind, name).config
            if model is not None and model not in models:
                models.append(model)
        return models

    def build(self, kind: str, config: BaseModel | str, **wiring: Any) -> Any:
        """Build a component from its validated config (or bare name) plus engine wiring."""
        if isinstance(config, str):
            return self.get(kind, config).factory(**wiring)
        fields = {k: getattr(config, k) for k in type(config).model_fields if k != "name"}
        return self.get(kind, config.name).factory(**fields, **wiring)


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded from entry points on first use."""
    global _default
    if _default is None:
        _default = Registry().load_entry_points()
    return _default
