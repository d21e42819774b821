"""The package's layout: every import points down, the core never imports the tools.

Imports are read from the source (ast), including those inside functions, so
a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
import pathlib

import unimr.memcachedlock

PACKAGE = "unimr.memcachedlock"
ROOT = pathlib.Path(unimr.memcachedlock.__file__).parent


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE] + parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The package's own modules that ``name`` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [stem] + ["%s.%s" % (stem, alias.name) for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith(PACKAGE):
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    edges = {name: imports_of(name, path, known) for name, path in mods.items()}
    # A package's __init__ re-exports its children: importing a child imports
    # the package first, but that is Python's order, not a dependency.
    return {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in edges.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    assert cycles(graph()) == []


#: Modules above the lock core: the command line and its tools, and the Zope integration.
TOOLS = {"tools", "__main__", "memcachedlock"}
ABOVE_CORE = {"zope", "zlock"} | TOOLS


def is_core(name: str) -> bool:
    rest = name[len(PACKAGE) + 1:]
    return bool(rest) and rest.split(".")[0] not in ABOVE_CORE


def test_the_core_never_imports_the_tools_or_zope():
    edges = graph()
    upward = sorted(
        (name, target) for name, targets in edges.items() if is_core(name)
        for target in targets if target != PACKAGE and not is_core(target)
    )
    assert upward == []


def test_cycles_are_found():
    """The checker itself: a lazy import back makes a cycle."""
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
