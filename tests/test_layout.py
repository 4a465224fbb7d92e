"""The package's shape, held against its code: layers that import only downward, no import circles, small
functions, and a command line that starts without torch.

Every import counts, including those inside functions (a lazy import up the layers is still a dependency up
the layers). The layers, lowest first, as README's Layout section draws them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "mlic"

# Top-level part of the package -> its layer. A module may import its own part or a part of a lower layer;
# parts that share a layer (data and models) may not import each other.
LAYERS = {
    "errors": 0,
    "config": 1,
    "runtime": 2,
    "data": 3,
    "models": 3,
    "losses": 3,
    "checkpoint": 4,
    "evaluation": 5,
    "inference": 6,
    "insight": 7,
    "engine": 8,
    "cli": 9,
    "__init__": 10,  # the public API: mlic.train, mlic.evaluate, mlic.Predictor
    "__main__": 11,
}
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    """The mlic modules ``path`` imports anywhere in it: ``from mlic.x import y`` counts x.y when that is a module
    (a submodule taken from its package), else x (a name defined in x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module for a in node.names
            ]
        else:
            continue
        found |= {name for name in names if name in MODULES and name != "mlic"}
    return found


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_part_of_the_package_has_a_layer():
    assert {_part(m) for m in MODULES} <= set(LAYERS), sorted({_part(m) for m in MODULES} - set(LAYERS))


def test_imports_run_only_downward():
    upward = []
    for module, imported in GRAPH.items():
        for target in imported:
            a, b = _part(module), _part(target)
            if a != b and LAYERS[b] >= LAYERS[a]:
                upward.append(f"{module} -> {target} ({a} is layer {LAYERS[a]}, {b} layer {LAYERS[b]})")
    assert not upward, "imports that do not run downward:\n" + "\n".join(sorted(upward))


def test_no_import_circles():
    """Tarjan's strongly connected components of the module graph: every one must be a single module."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_the_checks_can_fail():
    """The graph is read at all: a few imports that must be there are found."""
    assert "mlic.config" in GRAPH["mlic.cli.flags"]
    assert "mlic.evaluation.scoring" in GRAPH["mlic.engine.fit"]
    assert "mlic.insight.report" in GRAPH["mlic.engine.run_folder"]  # a lazy import, inside a function
    assert LAYERS[_part("mlic.data.pixels")] < LAYERS[_part("mlic.evaluation.scoring")]


def test_functions_are_short():
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_fit_stays_small():
    assert len((PACKAGE / "engine" / "fit.py").read_text().splitlines()) < 300


def test_no_module_named_like_a_junk_drawer():
    assert not [m for m in MODULES if m.rsplit(".", 1)[-1] in ("utils", "helpers", "misc", "common")]


@pytest.mark.parametrize("code", ["import mlic", "from mlic.cli import build_parser; build_parser()"])
def test_the_command_line_starts_without_torch(code):
    """``mlic --help`` builds every subcommand's flags; torch takes seconds to import and must not be needed."""
    out = subprocess.run(
        [sys.executable, "-c", f"import sys; {code}; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "torch" not in out, out
