"""The package's import graph: no cycles, and every import points down DESIGN's layer line

    cli → search → (spaces, tracking) → recipes → pruning → (models, data)

Function-level (late) imports count too: a late import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import prunetune

ROOT = Path(prunetune.__file__).parent
LAYERS = {"cli": 5, "search": 4, "spaces": 3, "tracking": 3, "recipes": 2, "pruning": 1, "models": 0, "data": 0}


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if package else parts)] = (path, package)
    return out


def _resolve(name: str, modules) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path, package: bool, modules) -> set[str]:
    here = module if package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {_resolve(a.name, modules) for a in node.names if a.name.startswith("prunetune")}
        elif isinstance(node, ast.ImportFrom):
            base = here.split(".")[: len(here.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            if target.startswith("prunetune"):
                found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in modules else _resolve(target, modules)
                          for a in node.names}
    return found - {None, module}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, path, package, modules) for m, (path, package) in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_cycles_are_found() -> None:  # the checker itself
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_point_down_the_layer_line() -> None:
    upward = sorted(f"{m} -> {d}" for m, deps in import_graph().items() for d in deps
                    if _layer(m) is not None and _layer(d) is not None and _layer(d) > _layer(m))
    assert upward == []


def test_the_layers_exist() -> None:
    assert {m.split(".")[1] for m in import_graph() if m.count(".")} >= set(LAYERS)
