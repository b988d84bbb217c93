"""The package's import graph: no cycle, and no front end imports another.

Read from the source with `ast` (imports inside functions count: a lazy import is still a dependency),
so a change that reintroduces a front end leaning on another fails here, not in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vreason_local"
# The front ends, by the module prefixes that make them up. cli.py is the `vreason` group: it registers
# the others' commands, so it may import them; nothing may import it, and no other front end another.
FRONT_ENDS = {
    "chat": ("vreason_local.chat",),
    "eval": ("vreason_local.evaluate",),
    "serve": ("vreason_local.serve",),
    "cli": ("vreason_local.cli",),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports (at any depth of its code)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                stem = f"{base}.{node.module}" if node.level and node.module else (node.module or base)
                targets = [stem] + [f"{stem}.{a.name}" for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _front_end(module: str) -> str | None:
    return next(
        (fe for fe, names in FRONT_ENDS.items() for n in names if module == n or module.startswith(n + ".")), None
    )


def test_the_graph_is_read():
    """The reader sees the imports it must judge (else the tests below would pass on an empty graph)."""
    graph = import_graph()
    assert len(graph) > 40
    assert "vreason_local.settings" in graph["vreason_local.engine"]
    assert "vreason_local.chat.command" in graph["vreason_local.cli"]  # a lazy import, inside a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("front_end", sorted(FRONT_ENDS))
def test_no_front_end_imports_another(front_end):
    graph = import_graph()
    crossing = sorted(
        f"{m} -> {d}"
        for m, deps in graph.items()
        if _front_end(m) == front_end
        for d in deps
        if _front_end(d) not in (None, front_end) and not (front_end == "cli" and d.endswith(".command"))
    )
    assert crossing == []
    assert not [m for m, deps in graph.items() if "vreason_local.cli" in deps], "nothing imports the CLI group"
