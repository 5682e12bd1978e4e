"""The import graph of the engineforge namespace, read from source (lazy imports inside functions counted).

Used by tests/unit/test_architecture.py to keep the layers and sizes the README promises, and runnable on its own
for the figures:  .venv/bin/python -m tests.helpers.import_graph
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Source folder -> the package it is installed as (pyproject.toml's package-dir).
PACKAGE_DIRS = {"engineforge": "engineforge", "build": "engineforge.build", "serve": "engineforge.serve",
                "loadtest": "engineforge.loadtest"}
# Lower layers never import higher ones. loadtest sits beside build and serve: it uses core and engines only.
LAYER_RANK = {"core": 0, "engines": 1, "build": 2, "serve": 3, "top": 9}
LOADTEST_MAY_USE = {"core", "engines", "loadtest"}
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60


@dataclass(frozen=True)
class Module:
    name: str
    path: Path

    @property
    def lines(self) -> int:
        return len(self.path.read_text().splitlines())

    def tree(self) -> ast.Module:
        return ast.parse(self.path.read_text(), filename=str(self.path))


def modules(root: Path = ROOT) -> dict[str, Module]:
    found: dict[str, Module] = {}
    for folder, package in PACKAGE_DIRS.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if "__pycache__" in parts or (folder == "engineforge" and parts[0] in PACKAGE_DIRS):
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            found[name] = Module(name, path)
    return found


def layer(name: str) -> str:
    """core < engines < build < serve; loadtest apart; commands that orchestrate several layers on top."""
    parts = name.split(".")
    if parts[-1] == "cli" or parts[1:2] in (["demo"], ["commands"]):
        return "top"
    # engineforge.lm is the LM engine layer (engines, the generation driver, bundles); its build is build.lm.
    return {"engines": "engines", "lm": "engines", "build": "build", "serve": "serve", "loadtest": "loadtest"}.get(
        parts[1] if len(parts) > 1 else "", "core")


def _targets(module: Module, node: ast.Import | ast.ImportFrom, known: dict[str, Module]) -> Iterator[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.name.split(".")
            if module.path.name != "__init__.py":
                package = package[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module.name:
            yield name


def import_graph(known: dict[str, Module] | None = None) -> dict[str, set[str]]:
    known = known if known is not None else modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, module in known.items():
        for node in ast.walk(module.tree()):
            if isinstance(node, ast.Import | ast.ImportFrom):
                graph[name].update(_targets(module, node, known))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def allowed(source: str, target: str) -> bool:
    lower, upper = layer(target), layer(source)
    if upper == "top" or lower == upper:
        return True
    if upper == "loadtest":
        return lower in LOADTEST_MAY_USE
    if lower in ("loadtest", "top"):
        return False
    return LAYER_RANK[lower] < LAYER_RANK[upper]


def layer_violations(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((source, target) for source, targets in graph.items() for target in targets
                  if not allowed(source, target))


def long_functions(known: dict[str, Module]) -> list[tuple[str, str, int]]:
    found = []
    for name, module in known.items():
        for node in ast.walk(module.tree()):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append((name, node.name, length))
    return sorted(found)


def long_modules(known: dict[str, Module]) -> list[tuple[str, int]]:
    return sorted((name, module.lines) for name, module in known.items() if module.lines > MAX_MODULE_LINES)


def summary() -> str:
    known = modules()
    graph = import_graph(known)
    found = cycles(graph)
    lines = [f"modules {len(known)}, lines {sum(m.lines for m in known.values())}",
             f"cycles {len(found)} ({sum(map(len, found))} modules)", *(f"  {c}" for c in found),
             f"layer violations {len(layer_violations(graph))}", *(f"  {v}" for v in layer_violations(graph)),
             f"modules over {MAX_MODULE_LINES} lines {long_modules(known)}",
             f"functions over {MAX_FUNCTION_LINES} lines {long_functions(known)}"]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary())
