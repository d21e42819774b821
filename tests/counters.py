"""Persistent counters for the view-move tests, importable by every client process (and the ZEO server).

``Counter`` is a plain ``persistent.Persistent``; ``ZopeCounter`` is Zope's
ExtensionClass-based ``Persistence.Persistent``.  Neither resolves
conflicts: two concurrent increments are a ConflictError in plain ZODB.
"""

from __future__ import annotations

import Persistence
import persistent


class Counter(persistent.Persistent):
    """One number, ``n``."""

    def __init__(self, n: int = 0) -> None:
        self.n = n


class ZopeCounter(Persistence.Persistent):
    """One number, ``n``, on Zope's persistent base class."""

    def __init__(self, n: int = 0) -> None:
        self.n = n


class Writer:
    """Something whose method a ZCML ``memcachedlock:lock`` directive locks."""

    def write(self, change):
        """Run ``change()`` (under the lock once the directive has run)."""
        change()


def writer_key(fun, writer, change) -> str:
    """All writers share one lock."""
    return "counters"
