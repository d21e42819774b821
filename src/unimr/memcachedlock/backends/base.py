"""What every lock store shares: the defaults of ``ILockBackend``, the capability names, commit passes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal, Protocol

from zope.interface import implementer

from .. import lease as _lease
from ..interfaces import ICommitPass, ILockBackend
from .records import Holder, Want

#: First and longest pause between two looks at a commit gate (seconds).
FIRST_POLL = 0.0005
MAX_POLL = 0.01

#: Locks whose gate did not drain in time: one warning per lock and process.
_slow_gates: set[str] = set()

#: Where the stores differ: each name a store may list in its ``capabilities``, and what it promises.
CAPABILITIES = {
    "commit_gate": "``commit_gate`` is an ICommitGate: optimistic commits pass together while nobody holds the lock",
    "notes": "``get_note``/``set_note``/``remove_note`` keep a small value per lock that outlives the lock",
    "waiter_board": "``waiter_board`` is an IWaiterBoard: waiters announce themselves, a release wakes the "
                    "announced one, and a lease can be handed to a waiting thread without freeing the lock",
    "note_with_acquire": "``acquire(with_note=True)`` reads the note and the gate in its round trip "
                         "(``note_read_at_acquire``)",
    "note_with_release": "``defer_note`` stores the note with the lease's release, and only while the lease "
                         "still holds the lock (a holder that lost it leaves the next holder's note alone)",
    "expiring_leases": "a lease lapses after its ttl unless renewed (memcached items; a file lock lives as "
                       "long as its process)",
    "multi_host": "processes on other hosts see the locks (a lock directory is one host's)",
    "outage_fallback": "while memcached cannot be reached, locks are taken in the lock directory instead",
}

#: ``warn`` of ``holder`` and ``list_locks``: told, in one line, that part of a store could not be read.
Warn = Callable[[str], None]


class WaiterBoard(Protocol):
    """What ``waiting`` asks of a store's waiter board (see ``IWaiterBoard``)."""

    def peek_want(self, name: str) -> tuple[bool, Want | None, bytes | None]:
        """One round trip: (is the lock held, the announcement or None, its cas)."""

    def put_want(self, name: str, value: bytes, cas: bytes | None, add: bool) -> bool:
        """Store an announcement: ``add`` it, or replace the one read with ``cas``; True if stored."""

    def drop_want(self, name: str, token: str) -> bool:
        """Remove the announcement if it is still ``token``'s; True if removed."""

    def hand_record_over(self, lease: _lease.Lease, thread: threading.Thread,
                         ttl: float) -> Want | Literal[False] | None:
        """Rewrite ``lease``'s record for ``thread``: the announcement (or None), False if not rewritten."""


class CommitGate(Protocol):
    """What zlock asks of a store's commit gate (see ``ICommitGate``)."""

    def enter(self, name: str) -> CommitPass | None:
        """A pass if nobody holds lock ``name``, else None."""

    def passing(self, name: str) -> int:
        """How many optimistic commits of ``name`` are passing now."""

    def drain(self, name: str, timeout: float) -> bytes | None:
        """Wait up to ``timeout`` seconds until no pass of ``name`` is out; the note read then."""


@implementer(ILockBackend)
class Backend:
    """Base of the lock stores.  Subclasses implement ``acquire``, ``holder``,
    ``list_locks``, ``break_lock`` and the notes."""

    kind = "base"
    #: The ``CAPABILITIES`` this store has.
    capabilities: frozenset[str] = frozenset()
    #: An ICommitGate, or None: optimistic commits of this store take the lock one at a time.
    commit_gate: CommitGate | None = None

    @property
    def waiter_board(self) -> WaiterBoard | None:
        """An IWaiterBoard, or None: waiters of this store poll."""
        return None

    def acquire(self, name: str, ttl: float, with_note: bool = False) -> _lease.Lease | None:
        """Try once to take lock ``name`` for ``ttl`` seconds: a lease, or None if it is held (see ILockBackend)."""
        raise NotImplementedError

    def holder(self, name: str, warn: Warn | None = None) -> Holder | None:
        """Who holds ``name``, or None (``warn``: see ILockBackend)."""
        raise NotImplementedError

    def list_locks(self, warn: Warn | None = None) -> list[Holder]:
        """Every lock held now in this store."""
        raise NotImplementedError

    def break_lock(self, name: str, token: str | None = None) -> bool:
        """Remove ``name`` whoever holds it (with ``token``: only while that holder has it); True if removed."""
        raise NotImplementedError

    def get_note(self, name: str) -> bytes | None:
        """The bytes last stored with ``set_note`` for ``name``, or None."""
        raise NotImplementedError

    def set_note(self, name: str, value: bytes) -> None:
        """Store a small bytes value for ``name``."""
        raise NotImplementedError

    def remove_note(self, name: str) -> None:
        """Forget ``name``'s note."""
        raise NotImplementedError

    def may_be_available(self, name: str) -> bool:
        return self.holder(name) is None

    def is_held(self, name: str) -> bool:
        """True if somebody holds ``name`` now (a file store: one failed ``open`` when the file is absent)."""
        return self.holder(name) is not None

    def release_all(self) -> int:
        return _lease.release_all(self)

    def note_read_at_acquire(self, lease: _lease.Lease) -> tuple[bool, bytes | None]:
        """(True, the note) if the acquisition of ``lease`` read the note and no commit can have passed
        the gate since; (False, None) if the note must be read apart (this store reads it apart)."""
        return False, None

    def defer_note(self, lease: _lease.Lease, value: bytes) -> bool:
        """Store ``value`` as the note of ``lease``'s lock with its release; False: store it now yourself."""
        return False

    def held_leases(self) -> list[_lease.Lease]:
        """Leases of this store that this process holds now."""
        return _lease.live_leases(self)

    def close(self) -> None:
        """Drop connections and file handles (the store stays usable)."""


@implementer(ICommitPass)
class CommitPass:
    """Base of the stores' commit passes: owns leaving once; stores implement ``_leave``."""

    __slots__ = ("note", "left")

    def __init__(self, note: bytes | None) -> None:
        self.note = note
        self.left = False

    def leave(self, entry: bytes | None = None, compact: Callable[[bytes | None], bytes] | None = None) -> None:
        """Record ``entry`` (see ICommitPass) and leave the gate; a second call does nothing."""
        if self.left:
            return
        self.left = True
        self._leave(entry, compact)

    def _leave(self, entry: bytes | None, compact: Callable[[bytes | None], bytes] | None) -> None:
        raise NotImplementedError


def poll(ready: Callable[[], bool], timeout: float) -> bool:
    """Call ``ready`` until it is True (return True) or ``timeout`` seconds passed (return False), backing off."""
    deadline = time.monotonic() + timeout
    pause = FIRST_POLL
    while not ready():
        now = time.monotonic()
        if now >= deadline:
            return False
        time.sleep(min(pause, deadline - now))
        pause = min(MAX_POLL, pause * 2)
    return True


def gate_not_drained(logger: logging.Logger, message: str, name: str, *args: object) -> None:
    """Log that lock ``name``'s gate did not drain: a warning the first time per lock, then debug."""
    log = logger.debug if name in _slow_gates else logger.warning
    _slow_gates.add(name)
    log(message, name, *args)
