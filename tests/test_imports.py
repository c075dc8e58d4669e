"""The import graph of ``srr``: no circles, and the dependency direction of docs/architecture.md.

Every ``import`` statement counts, including those inside functions (a deferred import still ties
two modules together; it only hides a circle until run time). Imports are read with ``ast``, so
the test sees the source, not what happens to be loaded.
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "srr"

# objective → derivation → layers → models → measurement / generalization / data → training → CLI
LEVELS = {
    "srr._checks": 0, "srr._config": 0, "srr.linalg": 0, "srr.rates": 0,
    "srr.objective": 1, "srr.derivation": 2, "srr.layers": 3, "srr.models": 4,
    "srr.measurement": 5, "srr.generalization": 5, "srr.data": 5, "srr.visualize": 5,
    "srr.train": 6, "srr.bench": 6, "srr.cli": 7, "srr.__main__": 8,
    "srr": 7,  # the package root re-exports everything below the CLI, which may read it (``__version__``)
}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


@lru_cache(maxsize=1)
def import_graph() -> dict[str, set[str]]:
    """``module -> the srr modules it imports`` (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [_resolve(alias.name, modules) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    head = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(head + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else _resolve(base, modules)
                           for a in node.names]
            else:
                continue
            graph[module].update(t for t in targets if t and t != module)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle ``[a, b, ..., a]`` of ``graph``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def _level(module: str) -> int:
    name = module
    while name not in LEVELS:
        name = name.rpartition(".")[0]
    return LEVELS[name]


def test_find_cycle_finds_a_circle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_import_graph_has_no_circles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", sorted(_modules()))
def test_no_module_imports_a_higher_layer(module):
    graph = import_graph()
    upward = sorted(t for t in graph[module] if _level(t) > _level(module))
    assert not upward, f"{module} (level {_level(module)}) imports higher layers {upward}"
