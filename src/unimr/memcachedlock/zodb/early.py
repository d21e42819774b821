"""Learned early locks: a kind of request that keeps redoing its work at a lock takes it when it begins.

A zlock taken in the middle of a transaction can only let the transaction
go on if nothing it used before has changed since its view began (the view
is then moved forward in place).  Some requests change shared objects long
before they reach the locked call: a Plone content add changes the uid
generator, the folder and its order before the catalog is written at
commit.  Under contention every such request is retried (``LockBusy``)
after it did its work, and the retry redoes it with the lock held.  Taking
the lock when the request begins does the same serialised work once.

Which requests need that is learned per process, from what they meet: a
*label* names a kind of request (the Zope publisher part uses ``METHOD
/path``).  When a transaction under a label is retried at a lock after it
changed objects, the label learns the lock, and so does its *family*, the
label with the object it names replaced by ``*`` (``PATCH /site/folder/doc-7``
teaches ``PATCH /site/folder/*``: edits of other documents in that folder
meet the same lock, while each document is edited rarely; a workflow
transition ``POST /site/folder/doc-7/@workflow/publish`` teaches
``POST /site/folder/*/@workflow/publish``).  From then on,
the transactions of the label and of its family take it when they begin
(:func:`to_take`).  Every
:data:`FORGET_EVERY` transactions of a label forget what it learned, so a
label whose contention stopped runs without early locks again after at most
one more retry.  The tables are bounded (:data:`MAX_LABELS`, least recently
used forgotten first).  Nothing here talks to the lock store: the
transaction lock (``locking.lock_early``) takes the locks.
"""

from __future__ import annotations

import collections
import os
import threading
from typing import Any

#: Labels remembered per process (the least recently used beyond are forgotten).
MAX_LABELS = 256
#: Locks one label may learn (more are not learned).
MAX_LOCKS_PER_LABEL = 8
#: Every this many transactions of a label, what it learned is forgotten and must be met again.
FORGET_EVERY = 32


class _Label:
    __slots__ = ("locks", "began")

    def __init__(self) -> None:
        #: Lock name -> what the call that was retried asked of the lock (the request and policy it was taken with).
        self.locks: dict[str, Any] = {}
        self.began = 0


_labels: collections.OrderedDict[str, _Label] = collections.OrderedDict()
_guard = threading.Lock()
_current = threading.local()


def begin(label: str | None) -> None:
    """This thread's transactions are of kind ``label`` from now on (None: of no kind)."""
    _current.label = label


def current() -> str | None:
    """The label of this thread's transactions, if one was set."""
    return getattr(_current, "label", None)


def family(label: str) -> str | None:
    """``label`` with the object it names replaced by ``*`` (None if that object is its root).

    The object is the last path segment before the first view (``@name``, ``@@name``) that
    is not a namespace traversal (``++api++``): ``POST /site/folder/doc/@workflow/publish`` is of
    family ``POST /site/folder/*/@workflow/publish``, ``PATCH /site/folder/doc`` of
    ``PATCH /site/folder/*``.
    """
    method, space, path = label.partition(" ")
    segments = path.split("/")
    if not space or not path.startswith("/"):
        return None
    views = [n for n, segment in enumerate(segments) if segment.startswith("@")]
    objects = segments[:views[0]] if views else segments  # what follows a view is its own
    named = [n for n, segment in enumerate(objects) if segment and not segment.startswith("++")]
    if len(named) < 2 or segments[named[-1]] == "*":
        return None
    segments[named[-1]] = "*"
    return method + " " + "/".join(segments)


def learn(name: str, request: Any) -> bool:
    """A transaction of the current label was retried at lock ``name`` after it changed objects.

    The label and its family learn the lock.  Returns True if either learned it now.
    """
    label = current()
    if label is None:
        return False
    learned_now = False
    with _guard:
        for kind in filter(None, (label, family(label))):
            found = _labels.get(kind)
            if found is None:
                found = _labels[kind] = _Label()
                if len(_labels) > MAX_LABELS:
                    _labels.popitem(last=False)
            _labels.move_to_end(kind)
            if name not in found.locks and len(found.locks) < MAX_LOCKS_PER_LABEL:
                found.locks[name] = request
                learned_now = True
    return learned_now


def to_take(label: str) -> list[tuple[str, Any]]:
    """The locks a transaction of ``label`` takes when it begins, by name: its label's and its family's.

    Each of the two forgets what it learned every FORGET_EVERY transactions that asked it.
    """
    wanted: dict[str, Any] = {}
    with _guard:
        for kind in filter(None, (family(label), label)):
            found = _labels.get(kind)
            if found is None:
                continue
            _labels.move_to_end(kind)
            found.began += 1
            if found.began % FORGET_EVERY == 0:
                found.locks.clear()
            wanted.update(found.locks)
    return sorted(wanted.items(), key=lambda item: item[0])


def learned(label: str) -> list[str]:
    """The lock names ``label`` takes at begin now (for tools and tests)."""
    with _guard:
        found = _labels.get(label)
        return sorted(found.locks) if found is not None else []


def reset() -> None:
    """Forget every label (tests)."""
    with _guard:
        _labels.clear()
    begin(None)


def _after_fork_in_child() -> None:
    global _guard
    _guard = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = ["begin", "current", "family", "learn", "to_take", "learned", "reset"]
