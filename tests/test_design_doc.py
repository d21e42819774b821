"""docs/design.rst's layer table is the real import graph: each module is in it once, and imports only its layer
and the layers below.

The table is read from the document itself, so a module added, moved or given a new import that points up fails
here until the document says where it belongs.
"""

from __future__ import annotations

import fnmatch
import pathlib
import re

import pytest
from test_layout import PACKAGE, ROOT, graph

DESIGN = pathlib.Path(__file__).parent.parent / "docs" / "design.rst"
BORDER = re.compile(r"^=+( +=+)+ *$")
MODULE = re.compile(r"``([^`]+)``")


def layer_table(text: str) -> dict[str, int]:
    """``module pattern -> layer`` from the first table whose header starts with ``layer``.

    A row starting with a number opens a layer; its second column, and that column in the lines that continue it,
    names modules as ``path.py``, ``dir/`` or ``dir/*.py`` (paths inside the package).
    """
    lines = text.splitlines()
    for start, line in enumerate(lines):
        if line.startswith("layer ") and start and BORDER.match(lines[start - 1]):
            break
    else:
        raise AssertionError("docs/design.rst has no table headed 'layer'")
    columns = [match.span() for match in re.finditer(r"=+", lines[start - 1])]
    patterns: dict[str, int] = {}
    layer: int | None = None
    borders = 0
    for line in lines[start + 1:]:
        if BORDER.match(line):
            borders += 1
            if borders == 2:
                break
            continue
        first = line[columns[0][0]:columns[1][0]].strip()
        if first:
            layer = int(first)
        cell = line[columns[1][0]:columns[2][0]]
        for pattern in MODULE.findall(cell):
            assert layer is not None, "a module before the first layer number: %r" % line
            assert pattern not in patterns, "%s is listed twice" % pattern
            patterns[pattern] = layer
    return patterns


def module_path(name: str) -> str:
    """``unimr.memcachedlock.zodb.notes`` -> ``zodb/notes.py``; a package -> its ``__init__.py``."""
    rest = name[len(PACKAGE) + 1:].replace(".", "/")
    if (ROOT / rest).is_dir() or not rest:
        return (rest + "/__init__.py").lstrip("/")
    return rest + ".py"


def layers_of_modules(patterns: dict[str, int], names: list[str]) -> dict[str, int]:
    """Each module's layer: the most specific pattern that matches its path wins (a file over ``dir/``)."""
    found: dict[str, int] = {}
    for name in names:
        path = module_path(name)
        matches = [(pattern.count("/") + (not pattern.endswith("/") and "*" not in pattern), layer)
                   for pattern, layer in patterns.items()
                   if path == pattern or fnmatch.fnmatch(path, pattern) or
                   (pattern.endswith("/") and path.startswith(pattern))]
        assert matches, "%s (%s) is not in docs/design.rst's layer table" % (name, path)
        found[name] = max(matches)[1]
    return found


def upward_imports(edges: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    return sorted("%s (layer %d) imports %s (layer %d)" % (name, layers[name], target, layers[target])
                  for name, targets in edges.items() for target in targets if layers[target] > layers[name])


def test_every_module_is_in_the_layer_table_and_imports_only_downwards():
    edges = graph()
    layers = layers_of_modules(layer_table(DESIGN.read_text(encoding="utf-8")), sorted(edges))
    assert upward_imports(edges, layers) == []


def test_every_entry_of_the_layer_table_names_a_module():
    names = sorted(graph())
    paths = [module_path(name) for name in names]
    for pattern in layer_table(DESIGN.read_text(encoding="utf-8")):
        assert any(path == pattern or fnmatch.fnmatch(path, pattern) or
                   (pattern.endswith("/") and path.startswith(pattern)) for path in paths), pattern


TABLE = """\
=====  ==================  =====
layer  modules             what
=====  ==================  =====
2      ``top.py``          the top
1      ``low/``            below,
       ``mid.py``          two rows
=====  ==================  =====
"""


def test_the_table_reader_and_the_check_find_an_upward_import():
    patterns = layer_table("text\n\n" + TABLE)
    assert patterns == {"top.py": 2, "low/": 1, "mid.py": 1}
    layers = {PACKAGE + ".top": 2, PACKAGE + ".low.a": 1, PACKAGE + ".mid": 1}
    assert upward_imports({PACKAGE + ".top": {PACKAGE + ".mid"}, PACKAGE + ".mid": set()}, layers) == []
    assert upward_imports({PACKAGE + ".mid": {PACKAGE + ".top"}}, layers) == [
        "%s.mid (layer 1) imports %s.top (layer 2)" % (PACKAGE, PACKAGE)]
    with pytest.raises(AssertionError, match="not in docs/design.rst"):
        layers_of_modules({"mid.py": 1}, [PACKAGE + ".elsewhere"])
