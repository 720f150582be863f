"""The package reads as a house: dependencies point one way, light modules stay light, the linter is clean."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "support"

#: Layers, lowest first: a module may import only from its own layer or below.
LAYERS = [
    {"errors", "artifacts", "prompts", "scoring", "papers"},  # leaves: no torch, no model
    {"heads", "records", "toydata"},  # heads and data records
    {"tasks", "contrasts"},  # the data layer: datasets and clean/corrupted pairs
    {"models", "decoding", "readout", "training", "memory"},  # shared pieces
    {"tracing", "selection", "finetune", "evaluation", "organism", "rhythm", "rl", "circuits",
     "interventions"},  # methods
    {"ablations", "synthesis"},  # analyses across methods (chapter 06)
    {"plots", "params"},  # what chapters use to present and configure
    {"chapter", "run", "book"},  # the chapter helper, the runner and the book's publishing helpers
]
LAYER = {m: i for i, layer in enumerate(LAYERS) for m in layer}


def import_graph() -> dict[str, set[str]]:
    """support module -> the support modules it imports, at module level or inside functions."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PKG.glob("*.py")):
        mod = path.stem
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1:  # from .x import y / from . import x
                    deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
                elif node.module and node.module.split(".")[0] == "support":
                    parts = node.module.split(".")
                    deps |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("support.")}
        graph[mod] = {d for d in deps if (PKG / f"{d}.py").exists()} - {mod}
    return graph


def test_every_module_has_a_layer():
    mods = {p.stem for p in PKG.glob("*.py")} - {"__init__"}
    assert mods == set(LAYER), f"unplaced: {mods - set(LAYER)}, gone: {set(LAYER) - mods}"
    import support

    assert set(support.__all__) == mods


def test_import_graph_has_no_cycle():
    import networkx as nx

    g = nx.DiGraph([(a, b) for a, deps in import_graph().items() for b in deps])
    cycles = list(nx.simple_cycles(g))
    assert not cycles, f"import cycles in support/: {cycles}"


def test_dependencies_point_down_the_layers():
    up = [(a, b) for a, deps in import_graph().items() if a in LAYER for b in deps if LAYER[b] > LAYER[a]]
    assert not up, f"imports that point up the layers (module -> what it imports): {up}"


def test_tasks_never_import_a_trainer():
    graph = import_graph()
    seen, todo = set(), ["tasks"]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += sorted(graph.get(m, ()))
    assert not seen & {"organism", "training", "finetune", "models"}, seen


@pytest.mark.parametrize("modules", ["support.selection, support.heads", "support.scoring, support.tasks",
                                     "support.params, support.papers"])
def test_light_modules_do_not_load_torch(modules):
    code = f"import {modules}, sys; assert 'torch' not in sys.modules, 'torch was imported'"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]


def test_ruff_passes():
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "."], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-1000:]


def test_no_sys_path_hacks():
    offenders = [str(p.relative_to(ROOT)) for d in ("support", "bench", "tests", "notebooks")
                 for p in (ROOT / d).rglob("*.*") if p.suffix in (".py", ".ipynb")
                 and "sys.path.insert" in p.read_text() and p.name != "test_layering.py"]
    assert not offenders, offenders
