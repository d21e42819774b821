"""Sphinx configuration for unimr.memcachedlock's documentation.

``python -m sphinx -W --keep-going -b html docs <out>`` builds it (and
tests/test_docs.py does, so a dangling reference fails the suite).  The index
page is README.rst; its links to ``docs/<page>.rst`` (right on GitHub and in
a checkout) become Sphinx cross-references here, so Sphinx checks that every
page they name exists.
"""

from __future__ import annotations

import re

project = "unimr.memcachedlock"
author = "unimr.memcachedlock developers"
copyright = "unimr.memcachedlock developers"
exclude_patterns = ["_build"]
html_theme = "alabaster"
highlight_language = "none"

#: `docs/zope.rst <docs/zope.rst>`_ and `CHANGES.rst <CHANGES.rst>`_ as README.rst writes them.
README_LINK = re.compile(r"`(?:docs/)?([\w-]+)\.rst <(docs/)?([\w-]+)\.rst>`_")


def _page(match: re.Match) -> str:
    page = match.group(3)
    if not match.group(2):
        page = {"CHANGES": "changes", "README": "index"}.get(page, page)
    return ":doc:`%s`" % page


def readme_links_to_references(app, relative_path, parent_docname, content) -> None:
    """Turn README.rst's file links into :doc: references when a page includes it."""
    content[0] = README_LINK.sub(_page, content[0])


def setup(app) -> dict:
    app.connect("include-read", readme_links_to_references)
    return {"parallel_read_safe": True}
