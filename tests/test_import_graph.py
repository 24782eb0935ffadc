"""The layering holds: arrows point one way and no module imports another in a cycle.

cli -> api -> engine -> {eval, data, nn, sampling} -> io -> config -> registry; plugins import
the contract and the building blocks only (io and config too: a converter writes a run). Read from the source with ``ast`` (every import,
also those inside functions), so a lazy import cannot hide a cycle.

Inside the engine, its places (the rooms ``reporting/``, ``devices/``, ``training/``,
``evaluation/``, ``comparison/`` and the door modules ``build``, ``pipeline``, ``editing``)
import one way too, in :data:`ENGINE_ORDER`.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = [ROOT / "platform", ROOT / "registry", ROOT / "plugins"]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stratagen_modules() -> dict[str, Path]:
    return {module_name(p, root): p for root in SOURCE_ROOTS for p in root.rglob("*.py")}


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The stratagen modules ``name`` imports (relative imports resolved; ``from package import
    submodule`` counts as importing the submodule)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m.startswith("stratagen")}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = stratagen_modules()
    names = set(modules)
    return {name: {m for m in imports_of(name, path, names) if m in names and m != name}
            for name, path in modules.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "stratagen"


def test_there_are_modules_to_check(graph):
    assert {"stratagen.registry.interfaces", "stratagen.engine.pipeline", "stratagen.engine.training.train",
            "stratagen.api", "stratagen.plugins.critic.model"} <= set(graph)


def test_no_import_cycles(graph):
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                cycle = stack[stack.index(child):] + [child]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if child not in state:
                visit(child)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


# Which layers each layer may import (besides itself). Packages' __init__ modules included.
ALLOWED = {
    "registry": set(),
    "config": {"registry"},
    "io": {"registry", "config"},
    "nn": {"registry", "io"},  # user weights files are read through io (DESIGN: nn -> io)
    "data": {"registry", "io"},
    "sampling": {"registry"},
    "eval": {"registry", "io", "nn", "data"},
    "engine": {"registry", "config", "io", "nn", "data", "sampling", "eval"},
    "plugins": {"registry", "config", "io", "nn", "data", "eval", "sampling"},  # converters write runs
    "api": {"registry", "config", "io", "engine"},
    "cli": {"registry", "config", "io", "engine", "api", "data"},
}


def test_layers_point_one_way(graph):
    wrong = sorted(f"{m} imports {i}" for m, deps in graph.items() for i in deps
                   if layer(i) != layer(m) and layer(i) not in ALLOWED[layer(m)])
    assert not wrong, "\n".join(wrong)


def test_the_engine_and_eval_never_import_the_public_api(graph):
    assert not [m for m, deps in graph.items() if layer(m) in ("engine", "eval") and "stratagen.api" in deps]


# The engine's places, lowest first: a room (sub-package) or a door module directly in engine/.
# A module imports only modules of its own place or of earlier places, so the places import one
# way (a strict order has no cycle); inside a place, test_no_import_cycles keeps modules acyclic.
# The door sits in the middle: build and pipeline are made from the lower rooms, and editing,
# evaluation and comparison work on a built run or a pipeline.
ENGINE_ORDER = ("reporting", "devices", "training", "build", "pipeline", "editing", "evaluation", "comparison")


def engine_place(module: str) -> str | None:
    """The place of an engine module (``stratagen.engine.training.fit`` -> ``training``); None for
    the ``stratagen.engine`` package itself and for modules outside the engine."""
    parts = module.split(".")
    return parts[2] if parts[:2] == ["stratagen", "engine"] and len(parts) > 2 else None


def test_every_engine_module_has_a_place(graph):
    engine = [m for m in graph if m.startswith("stratagen.engine.")]
    assert {engine_place(m) for m in engine} == set(ENGINE_ORDER), "a new engine room needs its place in ENGINE_ORDER"


def test_engine_places_import_one_way(graph):
    rank = {place: i for i, place in enumerate(ENGINE_ORDER)}
    wrong = sorted(f"{m} ({engine_place(m)}) imports {i} ({engine_place(i) or 'the engine package'})"
                   for m, deps in graph.items() if engine_place(m)
                   for i in deps if layer(i) == "engine"
                   and (engine_place(i) is None or rank[engine_place(i)] > rank[engine_place(m)]))
    assert not wrong, "\n".join(wrong)

