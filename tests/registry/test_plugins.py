"""The plugin registry: entry-point discovery, failure isolation, duplicates, and ``stratagen plugins``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from stratagen.registry import (PluginLoadError, Provider, Registry, StratagenError, UnknownComponentError,
                                hookimpl)

STRATAGEN = str(Path(sys.executable).with_name("stratagen"))
BUILTINS = {
    "tokenizer": {"vqgan"},
    "prior": {"maskgit"},
    "sampler": {"maskgit"},
    "schedule": {"cosine", "linear", "square", "cubic", "sqrt", "log", "exp"},
    "dataset": {"synthetic", "imagefolder"},
}


class Schedule:
    """A stand-in component factory."""


def write_broken_distribution(where: Path) -> Path:
    """A fake installed distribution ``broken-plugin 0.3`` whose entry point fails to import."""
    info = where / "broken_plugin-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[stratagen]\nbroken = broken_plugin_mod\n")
    (where / "broken_plugin_mod.py").write_text('raise ImportError("needs libfoo")\n')
    return where


@pytest.fixture
def broken(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(write_broken_distribution(tmp_path)))
    return tmp_path


def builtin_failures(registry: Registry) -> list:
    return [f for f in registry.failures if f.provider.distribution == "stratagen"]


# ----------------------------------------------------------------------------- built-ins
def test_builtins_load_from_entry_points_with_their_distribution():
    registry = Registry().load_entry_points(env={})
    assert builtin_failures(registry) == []
    for kind, names in BUILTINS.items():
        assert names <= set(registry.names(kind)), kind
        for name in names:
            provider = registry.get(kind, name).provider
            assert (provider.distribution, provider.version) == ("stratagen", version("stratagen"))
    assert registry.get("schedule", "cosine").provider.plugin == "schedules"
    assert registry.get("prior", "maskgit").provider.plugin == "maskgit"


def test_build_passes_config_fields_and_wiring():
    registry = Registry().load_entry_points(env={"STRATAGEN_PLUGINS": "schedules,maskgit"})
    schedule = registry.build("schedule", "cubic")
    assert float(schedule(0.5, 16)) == pytest.approx(1 - 0.5**3)
    sampler_config = registry.get("sampler", "maskgit").config.model_validate(
        {"name": "maskgit", "stream": "vq.tokens", "stage": {"steps": 3}})
    sampler = registry.build("sampler", sampler_config)
    assert (sampler.stream, sampler.stage.steps) == ("vq.tokens", 3)


def test_unknown_name_lists_installed_names():
    registry = Registry().load_entry_points(env={})
    with pytest.raises(UnknownComponentError) as err:
        registry.get("schedule", "nope")
    message = str(err.value)
    assert "unknown schedule 'nope'" in message
    for name in BUILTINS["schedule"]:
        assert name in message


# ----------------------------------------------------------------------------- a plugin that fails to import
def test_broken_plugin_is_recorded_and_builtins_still_load(broken):
    registry = Registry().load_entry_points(env={})
    [failure] = [f for f in registry.failures if f.provider.plugin == "broken"]
    assert failure.provider == Provider("broken", "broken-plugin", "0.3")
    assert "ImportError" in failure.error and "needs libfoo" in failure.error
    assert builtin_failures(registry) == []
    for kind, names in BUILTINS.items():
        assert names <= set(registry.names(kind))


def test_strict_mode_makes_a_load_failure_fatal(broken):
    with pytest.raises(PluginLoadError, match="needs libfoo"):
        Registry().load_entry_points(env={"STRATAGEN_STRICT_PLUGINS": "1"})


def test_disabled_plugin_is_not_loaded(broken):
    registry = Registry().load_entry_points(env={"STRATAGEN_DISABLE_PLUGINS": "broken"})
    assert [f for f in registry.failures if f.provider.plugin == "broken"] == []
    assert BUILTINS["schedule"] <= set(registry.names("schedule"))


def test_allow_list_loads_only_the_named_plugins(broken):
    registry = Registry().load_entry_points(env={"STRATAGEN_PLUGINS": "schedules"})
    assert registry.failures == []
    assert set(registry.names("schedule")) == BUILTINS["schedule"]
    assert {c.kind for c in registry.components()} == {"schedule"}
    assert {c.provider.plugin for c in registry.components()} == {"schedules"}


# ----------------------------------------------------------------------------- a plugin whose hook raises
class HalfBroken:
    """Registers a prior, then its sampler hook raises."""

    @hookimpl
    def stratagen_register_priors(self, register):
        register("half", Schedule)

    @hookimpl
    def stratagen_register_samplers(self, register):
        raise RuntimeError("boom in hook")


class Fixed:
    @hookimpl
    def stratagen_register_priors(self, register):
        register("whole", Schedule)


def test_raising_hook_keeps_none_of_the_plugins_components():
    registry = Registry()
    provider = Provider("hooky", "hooky-dist", "1.0")
    registry.register_plugin(HalfBroken(), provider)
    [failure] = registry.failures
    assert failure.provider == provider
    assert "RuntimeError: boom in hook" in failure.error
    assert registry.components() == []
    with pytest.raises(UnknownComponentError):
        registry.get("prior", "half")
    # the failed plugin was unregistered: its name is free again
    registry.register_plugin(Fixed(), provider)
    assert len(registry.failures) == 1
    assert registry.get("prior", "whole").provider == provider


def test_raising_hook_is_fatal_in_strict_mode():
    registry = Registry()
    registry.strict = True
    with pytest.raises(PluginLoadError, match="boom in hook"):
        registry.register_plugin(HalfBroken(), Provider("hooky", "hooky-dist", "1.0"))


def test_config_without_matching_name_tag_is_a_failure():
    from typing import Literal

    from stratagen.registry import ComponentConfig

    class Mislabelled(ComponentConfig):
        name: Literal["other"] = "other"

    class Plugin:
        @hookimpl
        def stratagen_register_samplers(self, register):
            register("mine", Schedule, Mislabelled)

    registry = Registry()
    registry.register_plugin(Plugin(), Provider("p", "p-dist", "1"))
    [failure] = registry.failures
    assert "needs name: Literal['mine'" in failure.error
    assert registry.components() == []


# ----------------------------------------------------------------------------- duplicate names
class TwinA:
    @hookimpl
    def stratagen_register_schedules(self, register):
        register("twin", Schedule)
        register("only-a", Schedule)


class TwinB:
    @hookimpl
    def stratagen_register_schedules(self, register):
        register("twin", Schedule)


def test_duplicate_name_is_reported_and_ambiguous():
    registry = Registry()
    registry.register_plugin(TwinA(), Provider("a", "dist-alpha", "1.0"))
    registry.register_plugin(TwinB(), Provider("b", "dist-beta", "2.0"))
    [failure] = registry.failures
    assert failure.provider.distribution == "dist-beta"
    assert "'twin'" in failure.error and "dist-alpha" in failure.error and "dist-beta" in failure.error
    with pytest.raises(UnknownComponentError) as err:
        registry.get("schedule", "twin")
    assert "ambiguous" in str(err.value)
    assert "dist-alpha" in str(err.value) and "dist-beta" in str(err.value)
    assert registry.get("schedule", "only-a").provider.distribution == "dist-alpha"  # unaffected
    assert [c.provider.distribution for c in registry.components("schedule") if c.name == "twin"] == [
        "dist-alpha", "dist-beta"]


def test_duplicate_name_is_fatal_in_strict_mode():
    registry = Registry()
    registry.strict = True
    registry.register_plugin(TwinA(), Provider("a", "dist-alpha", "1.0"))
    with pytest.raises(PluginLoadError, match="dist-alpha"):
        registry.register_plugin(TwinB(), Provider("b", "dist-beta", "2.0"))
    assert issubclass(PluginLoadError, StratagenError)


# ----------------------------------------------------------------------------- the CLI
def test_cli_lists_every_component_and_the_failure(broken):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATAGEN_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(broken), env.get("PYTHONPATH")]))
    procs = {fmt: subprocess.Popen([STRATAGEN, "plugins", *args], env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for fmt, args in (("text", []), ("json", ["--json"]))}
    outputs = {fmt: p.communicate(timeout=120) for fmt, p in procs.items()}
    for fmt, p in procs.items():
        assert p.returncode == 0, outputs[fmt][1]

    expected = Registry().load_entry_points(env={})  # same sys.path (tmp dir prepended) as the CLI
    rows = [(c.kind, c.name, c.provider.distribution, c.provider.version) for c in expected.components()]
    assert {(k, n) for k, ns in BUILTINS.items() for n in ns} <= {(k, n) for k, n, _, _ in rows}

    listing = json.loads(outputs["json"][0])
    assert [(r["kind"], r["name"], r["distribution"], r["version"]) for r in listing["components"]] == rows
    [failure] = [f for f in listing["failures"] if f["plugin"] == "broken"]
    assert failure == {"plugin": "broken", "distribution": "broken-plugin", "version": "0.3",
                       "error": next(f.error for f in expected.failures if f.provider.plugin == "broken")}
    assert "needs libfoo" in failure["error"]

    lines = outputs["text"][0].splitlines()
    assert lines[0].split() == ["KIND", "NAME", "DISTRIBUTION", "VERSION", "PLUGIN"]
    table = [tuple(line.split()[:4]) for line in lines[1:] if not line.startswith("FAILED")]
    assert table == rows
    failed = [line for line in lines if line.startswith("FAILED")]
    assert any("'broken'" in line and "broken-plugin 0.3" in line and "needs libfoo" in line for line in failed)


def test_ambiguous_name_in_a_config_is_reported_as_ambiguous_not_unknown(tmp_path):
    from stratagen import config as cfg
    from stratagen.plugins.vqgan import VQGANConfig
    from tinyconfigs import tiny_config

    class Twin:
        @hookimpl
        def stratagen_register_tokenizers(self, register):
            register("vqgan", Schedule, VQGANConfig)

    registry = Registry().load_entry_points(env={})
    registry.register_plugin(Twin(), Provider("twin", "dist-twin", "9.9"))
    with pytest.raises(StratagenError) as err:
        cfg.validate(tiny_config(tmp_path / "run"), "c.yaml", registry)
    line = str(err.value)
    assert "c.yaml: tokenizers.vq.model" in line and "'vqgan' is ambiguous" in line and "dist-twin 9.9" in line


def test_an_ambiguous_schedule_is_reported_as_ambiguous_not_unknown(tmp_path, monkeypatch):
    from stratagen import config as cfg
    from stratagen.registry import manager
    from tinyconfigs import tiny_config

    class Twin:
        @hookimpl
        def stratagen_register_schedules(self, register):
            register("cosine", Schedule)

    registry = Registry().load_entry_points(env={})
    registry.register_plugin(Twin(), Provider("twin", "dist-twin", "9.9"))
    monkeypatch.setattr(manager, "_default", registry)
    config = tiny_config(tmp_path / "run")
    config["priors"]["main"]["mask_schedule"] = "cosine"
    with pytest.raises(StratagenError) as err:
        cfg.validate(config, "c.yaml", registry)
    assert "schedule 'cosine' is ambiguous" in str(err.value) and "dist-twin 9.9" in str(err.value)
