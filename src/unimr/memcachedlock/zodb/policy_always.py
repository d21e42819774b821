"""zlock policy ``always``: the lock is held from the first call in a transaction until the transaction ends.

Taking it, the transaction compares its views with the commits made under
the lock (the lock's note, or the storage where the note cannot tell); a
view that lacks one is caught up and then moved forward in place or retried
(``locking``).  Its commits are recorded as *exclusive*: a writer holding
the lock may replace objects (``manage_catalogClear``, ``addIndex``), so an
optimistic commit made on a view from before it must be retried.
"""

from __future__ import annotations

from . import views
from .policy import Policy
from .private import Connection
from .taking import Entry


class Always(Policy):
    """Policy ``always``."""

    name = "always"
    exclusive = True

    def fresh_views(self, entry: Entry, connections: list[Connection], name: str, adopted: bool
                    ) -> tuple[bool, str]:
        """Fresh unless the note (or, where it cannot tell, the storage) has a commit since a view began."""
        views.warn_unchecked(connections, name)
        stale = views.commits_since_views(connections, entry.note)
        if stale:
            views.catch_up(stale)
        last = " (tid %s)" % max(tid for _, tid in stale).hex() if stale else ""
        return not stale, last


ALWAYS = Always()

__all__ = ["Always", "ALWAYS"]
