"""zlock policy ``adaptive``: lock a key while its writers meet, run optimistically while they do not.

Why adapt?  Locking a key costs its writers their parallelism: their
locked sections take turns, and each turn costs the lock store's round
trips.  Running optimistically costs the work of every transaction that
ZODB cannot reconcile with a concurrent commit.  Which is cheaper depends
on how often the writers of a key meet, which no operator knows in advance
and which changes with the time of day.  So each process watches, per key,
what its own transactions meet:

* **Locking** (policy ``always``, but its commits are ordinary ones: their
  note entries are not exclusive): a transaction *met* another writer if it
  had to wait for the lock or found that another holder committed after its
  view began.  After :data:`UNLOCK_WINDOW` locked transactions of which at
  most :data:`UNLOCK_AT_MOST` met one, the key runs optimistically.
* **Optimistic** (policy ``on-conflict`` with ``conflicts=1``: the commit
  passes the key's commit gate, and the retry after a ConflictError holds
  the lock from its begin, so it never fails on the key): a transaction met
  another writer if it had to be retried for it (a ConflictError, or an
  exclusive writer's commit after its view) or to wait at the commit gate
  for the lock's holder.  When :data:`LOCK_AT` of the
  last :data:`LOCK_WINDOW` optimistic transactions met one, the key locks
  again.

The two thresholds leave a band between them (hysteresis): meeting in
about one transaction in eight neither locks a quiet key nor frees a busy
one, so a key does not flap.  A key starts locked: a hot object must not
pay the conflicts of a learning phase, and a quiet key is freed after
:data:`UNLOCK_WINDOW` transactions.

A locked transaction cannot tell whether it would have conflicted, and the
lock makes its writers meet: code that works on after the locked call holds
the lock meanwhile, so its writers always wait for each other.  So a key
locked for :data:`PROBE_AFTER` transactions in a row is tried optimistically
(a *trial*): if :data:`LOCK_AT` of the trial's first :data:`LOCK_WINDOW`
transactions meet a writer, the key locks again and waits twice as long
before the next trial (at most :data:`MAX_PROBE_AFTER`); otherwise it stays
optimistic.  A failed trial costs at most :data:`LOCK_AT` retries, each of
which holds the lock from its begin.

The decision is per process and needs no round trip of its own: every
process learns from the writers its own transactions meet.  Processes in
different modes work together, as on-conflict's optimistic commits and
locked retries do: the commit gate lets no optimistic commit in while the
lock is held.

Use ``always`` for writers that *replace* objects (``manage_catalogClear``,
``addIndex``): a commit made on a view from before them writes into the
replaced objects without a conflict, so only the lock, and its exclusive
note entries, protect them.  catalog.zcml does so.
"""

from __future__ import annotations

import collections
import logging
import os
import threading

from .. import metrics

logger = logging.getLogger(__name__)

#: Optimistic transactions looked back on; LOCK_AT of them meeting another writer lock the key.
LOCK_WINDOW = 8
LOCK_AT = 2
#: Locked transactions looked back on; at most UNLOCK_AT_MOST of them meeting one frees the key.
UNLOCK_WINDOW = 16
UNLOCK_AT_MOST = 1
#: Locked transactions in a row before a trial of the optimistic mode; doubled after each failed trial.
PROBE_AFTER = 64
MAX_PROBE_AFTER = 4096
#: Keys remembered per process (the least recently used beyond are forgotten: they start locked again).
MAX_KEYS = 1024

LOCKING = "locking"
OPTIMISTIC = "optimistic"
#: The mode a key starts in (tests start keys optimistic to exercise that mode first).
START = LOCKING


class KeyHistory:
    """What one key's transactions in this process met, in the mode the key is in now."""

    __slots__ = ("mode", "met", "locked_for", "probe_after", "trial")

    def __init__(self) -> None:
        self.mode = START
        #: True for each recent transaction (in ``mode``) that met another writer.
        self.met: collections.deque[bool] = collections.deque(maxlen=UNLOCK_WINDOW)
        #: Locked transactions since the key last locked.
        self.locked_for = 0
        self.probe_after = PROBE_AFTER
        #: True while the optimistic mode is on trial (see the module docstring).
        self.trial = False

    def record(self, locked: bool, met: bool) -> str | None:
        """Count one transaction; the new mode if this one switches it, else None.

        An outcome of the other mode (a transaction that began before the
        switch) is not counted: it says nothing about the mode in force.
        """
        if locked != (self.mode == LOCKING):
            return None
        self.met.append(met)
        if self.mode == LOCKING:
            self.locked_for += 1
            if len(self.met) == UNLOCK_WINDOW and sum(self.met) <= UNLOCK_AT_MOST:
                self.probe_after = PROBE_AFTER
                return self._switch(OPTIMISTIC)
            if self.locked_for >= self.probe_after:
                self.trial = True
                return self._switch(OPTIMISTIC)
            return None
        recent = list(self.met)[-LOCK_WINDOW:]
        if sum(recent) >= LOCK_AT:
            if self.trial:
                self.probe_after = min(MAX_PROBE_AFTER, self.probe_after * 2)
            self.trial = False
            return self._switch(LOCKING)
        if self.trial and len(recent) == LOCK_WINDOW:
            self.trial = False  # passed: the key stays optimistic
            self.probe_after = PROBE_AFTER
        return None

    def _switch(self, mode: str) -> str:
        self.mode = mode
        self.met.clear()
        self.locked_for = 0
        return mode


_histories: collections.OrderedDict[str, KeyHistory] = collections.OrderedDict()
_guard = threading.Lock()


def _history(name: str) -> KeyHistory:
    """The key's history (call with ``_guard`` held); a new key starts locked."""
    history = _histories.get(name)
    if history is None:
        history = _histories[name] = KeyHistory()
        if len(_histories) > MAX_KEYS:
            _histories.popitem(last=False)
    else:
        _histories.move_to_end(name)
    return history


def locks(name: str) -> bool:
    """True if lock ``name`` is taken when a transaction first calls the function (mode ``locking``)."""
    with _guard:
        return _history(name).mode == LOCKING


def record(name: str, locked: bool, met: bool) -> None:
    """A transaction on lock ``name`` (``locked`` or optimistic) ended having ``met`` another writer or not."""
    with _guard:
        switched = _history(name).record(locked, met)
    if switched is not None:
        metrics.record_switch(name, switched)
        logger.debug("zlock %s (policy adaptive) now %s", name, switched)


def mode(name: str) -> str:
    """``locking`` or ``optimistic``: what lock ``name`` does now in this process (for tools and tests)."""
    with _guard:
        history = _histories.get(name)
        return history.mode if history is not None else START


def reset() -> None:
    """Forget every key's history (tests): each starts locked again."""
    with _guard:
        _histories.clear()


def _after_fork_in_child() -> None:
    global _guard
    _guard = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = ["locks", "record", "mode", "reset", "LOCKING", "OPTIMISTIC"]
