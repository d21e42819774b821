"""The documentation is tested like code: it builds, its references resolve, its examples run.

* Sphinx builds ``docs/`` (README.rst is its index page) with warnings as
  errors, so a link to a page that does not exist, a broken table or a bad
  cross-reference fails the suite.
* Every path to a document that the code, the tests, the benchmarks or the
  ZCML mention exists, and so does every file or test the documents name.
* Every Python example in README.rst and docs/*.rst (``.. code-block:: python``)
  runs, in a fresh interpreter, against the session's real memcached, and
  takes at least one lock there.  A Python example written as a plain literal
  block (``::``) would escape that, so it fails the suite too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]

#: Where the code may point readers at a document.
CODE_FILES = sorted(
    path
    for pattern in ("src/**/*.py", "src/**/*.zcml", "tests/**/*.py", "benchmarks/**/*.py", "scripts/*",
                    "*.zcml", "*.py", "buildout.cfg", "run-tests", "run-demo", ".ci/run")
    for path in ROOT.glob(pattern)
    if path.is_file() and path != Path(__file__).resolve() and "__pycache__" not in path.parts
)
#: A document named in code: docs/<anything>, README<anything>.rst, CHANGES.rst or any .md file.
DOCUMENT_PATH = re.compile(r"(?<![\w/.-])((?:docs/[\w/.-]*\w|README[\w.-]*\.rst|CHANGES\.rst|[\w./-]+\.md))\b")
#: A file of the checkout named in a document.
CHECKOUT_PATH = re.compile(r"(?<![\w/.-])((?:tests|benchmarks|scripts|docs|src)/[\w/.-]*\w)")
TEST_NAME = re.compile(r"``(?:[\w/]+\.py::)?(test_\w+)``")
PYTHON_START = re.compile(r"(from \w[\w.]* import |import \w|def |class |@\w|>>> )")


def python_examples() -> list[tuple[str, int, str]]:
    """``(document, line, code)`` of every ``.. code-block:: python`` in the documents."""
    examples = []
    for path in DOCUMENTS:
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            match = re.match(r"(\s*)\.\. code-block:: python\s*$", line)
            if not match:
                continue
            body, indent = [], len(match.group(1))
            for following in lines[number + 1:]:
                stripped = following.strip()
                if stripped and len(following) - len(following.lstrip()) <= indent:
                    break
                if not body and stripped.startswith(":"):  # a directive option
                    continue
                body.append(following)
            examples.append((path.relative_to(ROOT).as_posix(), number + 1, textwrap.dedent("\n".join(body))))
    return examples


def literal_blocks(path: Path) -> list[tuple[int, str]]:
    """``(line, first line of content)`` of every ``::`` literal block of a document."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    for number, line in enumerate(lines):
        if not line.rstrip().endswith("::") or line.lstrip().startswith(".. "):
            continue
        indent = len(line) - len(line.lstrip())
        for following in lines[number + 1:]:
            if following.strip():
                if len(following) - len(following.lstrip()) > indent:
                    blocks.append((number + 1, following.strip()))
                break
    return blocks


EXAMPLES = python_examples()


def test_docs_build_with_warnings_as_errors(tmp_path):
    """Sphinx builds docs/ cleanly: no dangling reference, no page outside the toctree."""
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs", str(tmp_path / "html")],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    built = {path.stem for path in (tmp_path / "html").glob("*.html")}
    assert {path.stem for path in DOCUMENTS if path.parent.name == "docs"} <= built


def test_readme_is_at_most_12_kb():
    assert (ROOT / "README.rst").stat().st_size <= 12 * 1024


def test_documents_named_in_the_code_exist():
    named = {}
    for path in CODE_FILES:
        for match in DOCUMENT_PATH.finditer(path.read_text(encoding="utf-8", errors="replace")):
            named.setdefault(match.group(1), []).append(path.relative_to(ROOT).as_posix())
    assert "docs/zope.rst" in named, "the scan found nothing: the pattern is broken"
    missing = {document: sorted(set(where)) for document, where in named.items() if not (ROOT / document).exists()}
    assert not missing, "documents named in the code but absent: %s" % missing


def test_files_and_tests_named_in_the_documents_exist():
    tests = "".join(path.read_text(encoding="utf-8") for path in (ROOT / "tests").glob("test_*.py"))
    missing = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        missing += ["%s: %s" % (path.name, name) for name in set(CHECKOUT_PATH.findall(text))
                    if not (ROOT / name).exists()]
        missing += ["%s: test %s" % (path.name, name) for name in set(TEST_NAME.findall(text))
                    if "def %s(" % name not in tests]
    assert not missing


def test_python_examples_are_code_blocks_that_run():
    """A Python example in a plain ``::`` block would not be run: write it as a code-block."""
    assert len(EXAMPLES) >= 5, EXAMPLES
    plain = ["%s:%d: %s" % (path.name, line, first) for path in DOCUMENTS
             for line, first in literal_blocks(path) if PYTHON_START.match(first)]
    assert not plain, "Python in plain literal blocks (use '.. code-block:: python'): %s" % plain


@pytest.mark.parametrize("document, line, code", EXAMPLES, ids=["%s:%d" % example[:2] for example in EXAMPLES])
def test_python_example_runs_against_memcached(document, line, code, memcached, tmp_path):
    """Each example runs in a fresh interpreter, as a reader would paste it, and locks in memcached."""
    before = int(memcached.stats()["total_items"])
    env = dict(os.environ, TMPDIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, "%s:%d failed:\n%s\n%s" % (document, line, code, result.stderr)
    assert int(memcached.stats()["total_items"]) > before, "%s:%d took no lock in memcached" % (document, line)
