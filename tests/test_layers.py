"""The house: layers that show in the folders, imports only downward, no import circles.

Every import of a tensorsafe module counts, also one inside a function (those exist to load a
module on first use, never to dodge a circle: a circle through one fails here). Imports under
``if TYPE_CHECKING:`` are annotations only and never run; they may not point upward either.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tensorsafe

PACKAGE = Path(tensorsafe.__file__).parent
LAYERS: list[tuple[str, ...]] = [
    ("errors", "version", "rules", "report", "explain", "paths", "listing", "tensors", "limits"),
    ("readers",),
    ("pickles",),
    ("safetensors", "policy_file", "formats", "sarif"),
    ("engine",),
    ("hub",),
    ("api",),
    ("checkpoint", "load", "batch", "converter"),
    ("pipeline",),
    ("cli", "__main__", "data"),
]
"""Lowest first: a module may import its own layer and the layers above it in this list."""


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, under TYPE_CHECKING) for every tensorsafe import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            typing_only |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for target in targets:
            resolved = _resolve(target) if target.startswith("tensorsafe") else None
            if resolved and resolved != module:
                out.append((resolved, node.lineno, id(node) in typing_only))
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "tensorsafe"))
def test_imports_only_go_down(module):
    mine = _layer(module)
    upward = [f"line {line}: {target}" for target, line, _ in GRAPH[module]
              if target != "tensorsafe" and _layer(target) > mine or target == "tensorsafe"]
    assert not upward, f"{module} imports from a higher layer: {upward}"


def test_no_import_circles():
    """Tarjan's strongly connected components over the imports that run."""
    edges = {m: sorted({t for t, _, typing in GRAPH[m] if not typing}) for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    assert circles == [], circles


def test_the_checker_sees_a_circle_and_an_upward_import(tmp_path):
    """The two checks above are not vacuous: the import scan finds in-function and relative imports."""
    found = {t for t, _, _ in GRAPH["tensorsafe.cli.entry"]}
    assert "tensorsafe.cli.main" in found  # imported inside main()
    assert _layer("tensorsafe.readers.zip") < _layer("tensorsafe.engine.scanner") < _layer("tensorsafe.api")
    assert any(t == "tensorsafe.engine.dispatch" for t, _, _ in GRAPH["tensorsafe.engine.scanner"])


def test_nothing_below_the_api_knows_a_url():
    """Only the API layer and above ask the Hub client whether a path is a URL."""
    users = sorted(m for m, imports in GRAPH.items() for t, _, _ in imports
                   if m != "tensorsafe" and t.startswith("tensorsafe.hub") and _layer(m) < _layer("tensorsafe.hub"))
    assert users == []
    callers = sorted(m for m, path in MODULES.items() if m != "tensorsafe" and _layer(m) < _layer("tensorsafe.hub")
                     and "is_hub_url" in path.read_text(encoding="utf-8"))
    assert callers == []
