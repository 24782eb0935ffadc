"""Config files: YAML read through fsspec, ``extends`` chains, merging and ``--set`` overrides.

Every mistake is a :class:`ConfigError` of one line naming the file and what is wrong.
"""
from __future__ import annotations

import functools
import logging
import posixpath
from pathlib import PurePosixPath
from typing import Any

import fsspec
import yaml

from stratagen.registry import ConfigError, get_registry
from stratagen.registry.manager import KINDS

log = logging.getLogger("stratagen")


def read_yaml(url: str) -> dict[str, Any]:
    """Read one YAML mapping from a path or fsspec URL; ConfigError if missing or malformed."""
    try:
        with fsspec.open(url, "r") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{url}: config file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{url}: not a text file (a config is UTF-8 YAML)") from None
    except IsADirectoryError:
        raise ConfigError(f"{url}: is a directory, not a config file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{url}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{url}: a config must be a YAML mapping, got {type(data).__name__}")
    return data


def resolve_relative(base_url: str, ref: str) -> str:
    if "://" in ref or ref.startswith("/"):
        return ref
    protocol, sep, path = base_url.rpartition("://")
    return f"{protocol}{sep}{posixpath.normpath(PurePosixPath(path).parent / ref)}"


def _fields(old: Any, new: Any) -> set[str] | None:
    """The config keys component ``new`` accepts, taking the kind where ``old`` is also a
    component (None if ``new`` is no installed component: validation then names it)."""
    registry = get_registry()
    kinds = [kind for kind in KINDS if isinstance(new, str) and new in registry.names(kind)]
    kinds = [kind for kind in kinds if old in registry.names(kind)] or kinds
    if not kinds:
        return None
    return set(registry.get(kinds[0], new).config.model_fields)


def _same_schema(a: Any, b: Any) -> bool:
    """Whether components ``a`` and ``b`` share one config model (e.g. vqgan2-r and vqgan2-c)."""
    if a == b:
        return True
    registry = get_registry()
    return any(registry.get(kind, a).config is registry.get(kind, b).config
               for kind in KINDS
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
    return deep_merge(load_raw(resolve_relative(url, parent), _chain + (url,)), data)


@functools.cache
def _say_dropped(notice: str) -> None:
    """Said once per process: a comparison loads a variant's config once per seed."""
    log.warning(notice)


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides; values are parsed as YAML (``3``, ``true``, ``[1,2]``).

    Setting a section's ``name`` to a component with another config model swaps the component
    in one line (``--set sampler.name=maskgit``): the section keeps the keys the new component
    accepts, and the ones it does not are dropped with a warning naming them; ``KEY=null`` on a
    section removes it.
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
            if last == "name" and not _same_schema(node.get("name"), value):  # another schema
                accepted = _fields(node.get("name"), value)
                dropped = [k for k in node if k != "name" and accepted is not None and k not in accepted]
                if dropped:
                    _say_dropped(f"--set {item}: {value!r} takes no {', '.join(dropped)}; dropped from "
                                 f"{'.'.join(parts[:-1]) or 'the config'}")
                for k in dropped:
                    del node[k]
            node[last] = value
    return data


