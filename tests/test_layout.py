"""Guard the source layout: three roots merged into one ``stratagen`` namespace package.

The repository has a top-level ``platform/`` directory; it must never shadow the
standard library's ``platform`` module, even with the repository root on ``sys.path``.
"""
from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = ("platform", "registry", "plugins")


def test_stdlib_platform_is_not_shadowed_from_repo_root():
    out = subprocess.run(
        [sys.executable, "-c", "import platform, sys; print(platform.system()); print(platform.__file__)"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.splitlines()
    system, module_file = out[0], Path(out[1]).resolve()
    assert system == "Linux"
    assert module_file.name == "platform.py"
    assert module_file.parent == Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert ROOT not in module_file.parents


@pytest.mark.parametrize("module, root", [
    ("stratagen.registry", "registry"),
    ("stratagen.plugins", "plugins"),
    ("stratagen.nn", "platform"),
])
def test_subpackages_resolve_to_their_roots(module, root):
    imported = __import__(module, fromlist=["_"])
    location = Path(imported.__file__).resolve()
    name = module.split(".")[-1]
    assert location == ROOT / root / "stratagen" / name / "__init__.py"


def test_stratagen_is_a_namespace_over_the_three_roots():
    import stratagen

    assert getattr(stratagen, "__file__", None) is None  # a namespace package, no __init__.py
    assert {Path(p).resolve() for p in stratagen.__path__} >= {ROOT / r / "stratagen" for r in SOURCE_ROOTS}


@pytest.mark.parametrize("root", SOURCE_ROOTS)
def test_roots_have_no_init(root):
    assert (ROOT / root / "stratagen").is_dir()
    assert not (ROOT / root / "__init__.py").exists()
    assert not (ROOT / root / "stratagen" / "__init__.py").exists()
