"""The package's layout: every import points down, the core never imports the tools,
no name hides a module, functions and classes stay short.

Imports are read from the source (ast), including those inside functions, so
a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import pkgutil
import sys
import types

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


#: Modules above the lock core: the command line and its tools, the Zope integration, and zlock (the ``zodb``
#: subpackage and its old import path ``transactionlock``), the only parts that may import Zope, ZODB or transaction.
TOOLS = {"tools", "__main__", "memcachedlock"}
ABOVE_CORE = {"zope", "zodb", "transactionlock"} | TOOLS


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


def hiding_names(package: types.ModuleType) -> list[str]:
    """Names in ``package``'s namespace bound to something other than its submodule of that name."""
    namespace = vars(package)
    return sorted(
        "%s.%s" % (package.__name__, info.name)
        for info in pkgutil.iter_modules(package.__path__)
        if info.name in namespace
        and namespace[info.name] is not sys.modules.get("%s.%s" % (package.__name__, info.name))
    )


def test_no_name_hides_a_module():
    """``from unimr.memcachedlock import X`` never means a function where a module X exists."""
    for name in modules():
        if not name.endswith("__main__"):
            importlib.import_module(name)
    packages = [sys.modules[name] for name, path in modules().items() if path.name == "__init__.py"]
    assert len(packages) >= 4
    assert [hidden for package in packages for hidden in hiding_names(package)] == []


def test_hiding_names_are_found(tmp_path):
    """The checker itself: a function bound under a submodule's name is reported."""
    (tmp_path / "thing.py").write_text("")
    (tmp_path / "other.py").write_text("")
    fake = types.ModuleType("fake_package")
    fake.__path__ = [str(tmp_path)]
    fake.thing = lambda: None
    assert hiding_names(fake) == ["fake_package.thing"]


#: The longest function or method, and the longest class, in lines (end_lineno - lineno + 1).
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 200


def too_long(tree: ast.AST, where: str) -> list[str]:
    found = []
    for node in ast.walk(tree):
        limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                found.append("%s:%d %s (%d lines)" % (where, node.lineno, node.name, length))
    return found


def test_short_functions_and_classes():
    found = []
    for name, path in modules().items():
        found += too_long(ast.parse(path.read_text(encoding="utf-8")), name)
    assert found == []


def test_long_functions_are_found():
    """The checker itself: a 61-line function and a 201-line class are reported."""
    def body(lines: int) -> str:
        return "".join("    x%d = %d\n" % (n, n) for n in range(lines))

    assert too_long(ast.parse("def f():\n" + body(59)), "m") == []
    assert too_long(ast.parse("def f():\n" + body(60)), "m") == ["m:1 f (61 lines)"]
    assert too_long(ast.parse("class C:\n" + body(199)), "m") == []
    assert too_long(ast.parse("class C:\n" + body(200)), "m") == ["m:1 C (201 lines)"]
