"""zlock policy ``adaptive``, the default: ``always`` while a key's writers meet, ``on-conflict`` while they do not.

Which of the two a key runs in is decided per process and key by
:mod:`.adaptive`, from what this process's transactions met.  While
locking, its commits are ordinary ones: their note entries are not
exclusive (only policy ``always`` may replace objects).
"""

from __future__ import annotations

from . import adaptive
from .policy import Policy
from .policy_always import Always
from .policy_onconflict import ON_CONFLICT


class Adaptive(Always):
    """Policy ``adaptive``: policy ``always`` with ordinary commits, or ``on-conflict`` (``conflicts=1``)."""

    name = "adaptive"
    exclusive = False
    adaptive = True

    def for_key(self, name: str) -> Policy:
        """This policy while the key locks, else on-conflict."""
        return self if adaptive.locks(name) else ON_CONFLICT


ADAPTIVE = Adaptive()

__all__ = ["Adaptive", "ADAPTIVE"]
