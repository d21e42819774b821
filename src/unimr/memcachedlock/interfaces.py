"""Contracts between the lock objects, the decorators and the lock stores.

The design follows ``filelock``: the lock object owns the waiting (polling,
back-off, wake-ups, deadlines), while a backend only has to offer a handful
of primitives that each take bounded time.  Backends hand out one *lease* per
acquisition: the lease carries a random token and is the only thing that can
release or renew that acquisition, so a late release can never remove a lock
that has meanwhile passed to somebody else (``python-redis-lock``'s rule).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal

from zope.interface import Attribute, Interface

from .backends.records import Holder, Want


class ILock(Interface):
    """A lock with the protocol of ``threading.Lock`` / ``threading.RLock``.

    The lock is shared by every thread and process that uses the same key and
    the same lock store, not only by the threads of this process.
    """

    key = Attribute("The key the caller gave (str or bytes).")
    name = Attribute("The safe, namespaced name the backend stores.")
    lost = Attribute(
        "True when the renewer found the lease taken by somebody else (or expired) "
        "while this object still believed it held the lock."
    )
    timeout = Attribute("The lease in seconds: how long the lock outlives a crashed holder.")
    interval = Attribute("The longest pause between two polls while waiting, in seconds.")

    def acquire(blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock; return True if taken, False if not.

        Follows ``threading.Lock.acquire``: ``blocking=False`` tries once,
        ``timeout`` (seconds, -1 for no limit) bounds the wait, a timeout with
        ``blocking=False`` or a negative timeout other than -1 is a ValueError,
        one above ``threading.TIMEOUT_MAX`` an OverflowError.
        """

    def release() -> None:
        """Give the lock back; RuntimeError if it is not held."""

    def locked() -> bool:
        """True if anybody holds the lock."""

    def __enter__() -> ILock:
        """``acquire()``, for the with-statement."""

    def __exit__(*exc_info: object) -> None:
        """``release()``, for the with-statement."""


class ILease(Interface):
    """One acquisition of a lock in a backend."""

    backend = Attribute("The store that granted it (callers only compare it: ``lease.backend is store``).")
    name = Attribute("The lock name.")
    token = Attribute("Random token identifying this acquisition.")
    ttl = Attribute("The lease in seconds.")
    pid = Attribute("The process that took it (a forked child never holds its parent's leases).")
    started = Attribute("Monotonic time of the acquisition, or of the hand-over to the current thread.")
    held = Attribute("True while this process still holds the lease, as far as it knows.")
    released = Attribute("True once released (by this lease, release_all, or a fork).")
    lost = Attribute("True once a renewal or release found the lock no longer ours, or it lapsed unrenewed.")
    on_lost = Attribute("Called with the lease (in a thread of its own) when it is found lost, or None.")
    renew_until = Attribute(
        "Monotonic time after which the renewer releases the lease instead of renewing it (zlock's "
        "reservations), or None: renewed while held."
    )
    successor = Attribute(
        "After the release: the waiter announcement (bytes) the store kept next to the lock, or None "
        "(always None in a store without a waiter board)."
    )

    def release() -> bool:
        """Remove the lock if it is still ours; return True if it was.

        Compares the token with what the store holds.  Never raises: a store
        that cannot be reached is logged, and cleaned up when it answers again.
        """

    def renew(ttl: float | None = None) -> bool:
        """Extend the lease if the lock is still ours; return True if it was.

        Raises BackendUnavailable if the store cannot be reached.
        """

    def handed_to(ttl: float) -> bool:
        """The lease now serves another lock object (and thread) of this process, for ``ttl`` seconds.

        See ``waiting.hand_over``.  True if the lock is still ours.
        """


class IWaiterBoard(Interface):
    """The optional part of a store that keeps one waiter announcement per lock.

    The head waiter of a process announces itself (a ``records.Want``) next to
    the lock, so that a releaser on another host can leave it the lock.
    """

    def peek_want(name: str) -> tuple[bool, Want | None, bytes | None]:
        """One round trip: (is the lock held, the announcement or None, its cas)."""

    def put_want(name: str, value: bytes, cas: bytes | None, add: bool) -> bool:
        """Store an announcement: ``add`` it, or replace the one read with ``cas``; True if stored."""

    def drop_want(name: str, token: str) -> bool:
        """Remove the announcement if it is still ``token``'s; True if removed."""

    def hand_record_over(lease: ILease, thread: threading.Thread, ttl: float) -> Want | Literal[False] | None:
        """Rewrite ``lease``'s record for ``thread``, reading the announcement.

        Returns the announcement (or None), or False when the record could not
        be rewritten in one step.
        """


class ICommitPass(Interface):
    """One optimistic commit let through a commit gate; it must leave, whatever happens."""

    note = Attribute("The lock's note as it was when the pass was given (bytes or None).")

    def leave(entry: bytes | None = None, compact: Callable[[bytes | None], bytes] | None = None) -> None:
        """Record ``entry`` (bytes) in the note, then leave the gate.

        The entry is appended.  ``compact`` (optional), given a note,
        returns it written whole with ``entry`` in it; a store calls it when
        it can replace the note without dropping another commit's entry (a
        long note of appended entries is compacted that way).  Never raises:
        a pass that cannot leave is forgotten by the next holder's ``drain``.
        """


class ICommitGate(Interface):
    """Lets optimistic commits of a key through together while nobody holds its lock.

    Optimistic commits (zlock policy ``on-conflict``) must not come between a
    holder's view and its commit, but need not exclude each other: ZODB's
    conflict resolution merges them.  So instead of taking the lock one after
    another they pass a gate, which counts them, and a holder waits after
    its acquisition until the commits that passed before it have left.  The
    count is announced before the lock is read and the lock is taken before
    the count is read, so a commit and a holder never both miss each other.
    """

    def enter(name: str) -> ICommitPass | None:
        """One round trip: a pass (an ICommitPass) if nobody holds lock ``name``, else None.

        None tells the caller to take the lock instead.  Raises
        BackendUnavailable if the store cannot be reached.
        """

    def passing(name: str) -> int:
        """How many optimistic commits of ``name`` are passing now (one round trip)."""

    def drain(name: str, timeout: float) -> bytes | None:
        """Wait up to ``timeout`` seconds until no pass of ``name`` is out; return the note read then.

        Called by the holder of lock ``name`` right after taking it.  A count
        that does not drop in time (a process died during its commit) is reset
        and logged: waiting longer would only cost time, and ZODB's conflict
        detection still guards the commit.  A count the store may have
        forgotten (a memcached restarted lately, with no note either) is
        waited for as if it were there: ``timeout`` seconds.
        """


class ILockBackend(Interface):
    """A lock store: memcached, a lock directory, or a fallback between two.

    Inspection (``holder``, ``list_locks``, ``break_lock``) serves the
    ``memcachedlock`` command as well as the locks.  The note calls serve
    zlock; ``backends.base.Backend`` has the defaults where a store has no
    shortcut (the note read and stored apart).
    """

    kind = Attribute("Short name: 'memcached', 'file' or 'fallback'.")
    capabilities = Attribute(
        "A frozenset of the short names of what this store can do where stores differ "
        "(``backends.base.CAPABILITIES`` says what each name means), for selecting stores in tests."
    )
    waiter_board = Attribute(
        "Where waiters announce themselves to releasers (an IWaiterBoard), or None (waiters only poll): "
        "the memcached store keeps one beside its locks, the file store in the lock directory, the "
        "fallback store uses memcached's, and the lock directory's while memcached is unreachable."
    )
    commit_gate = Attribute(
        "An ICommitGate for optimistic commits, or None: without one every optimistic commit takes the lock."
    )

    def acquire(name: str, ttl: float, with_note: bool = False) -> ILease | None:
        """Try once to take lock ``name`` for ``ttl`` seconds.

        ``with_note`` (zlock; passed only when True): the store may read the
        lock's note and commit gate in the same request, for the new holder,
        and offer them through ``note_read_at_acquire(lease)``.

        Return an ILease, or None if somebody else holds the lock.  Takes at
        most the store's I/O timeouts.  Raises BackendUnavailable if the store
        cannot be reached.
        """

    def note_read_at_acquire(lease: ILease) -> tuple[bool, bytes | None]:
        """(True, the note) if ``lease``'s acquisition read the note and no commit can have passed
        the gate since; (False, None) if the note must be read apart."""

    def defer_note(lease: ILease, value: bytes) -> bool:
        """Store ``value`` as the note of ``lease``'s lock with its release; False: store it now yourself.

        Why with the release: the note is in place before the next holder can
        take the lock, a round trip is saved, and a holder whose lease was
        broken and taken by another meanwhile does not write its note over
        the new holder's (the release finds the lock no longer its own and
        drops the note).  False for a lease this store did not make.
        """

    def may_be_available(name: str) -> bool:
        """True if nobody seems to hold ``name`` right now (a hint, no promise)."""

    def is_held(name: str) -> bool:
        """True if somebody holds ``name`` now."""

    def holder(name: str, warn: Callable[[str], None] | None = None) -> Holder | None:
        """Describe who holds ``name`` (an ``records.Holder``), or None.

        ``warn`` (inspection): a store that could read only part of itself
        says so through it (one line) and answers from the rest, or raises
        BackendUnavailable when the rest has no holder either (then nobody
        can tell).  Without it such a part holds nothing seen.
        """

    def list_locks(warn: Callable[[str], None] | None = None) -> list[Holder]:
        """Every lock held now in this store, as ``records.Holder`` objects, oldest first.

        ``warn``: as for ``holder``, a part that could not be read is said through it.
        """

    def break_lock(name: str, token: str | None = None) -> bool:
        """Remove ``name`` whoever holds it; True if something was removed.

        With ``token``, only while the holder with that token has it
        (compare-and-delete): a lock released and taken again since the
        caller looked is left alone.
        """

    def held_leases() -> list[ILease]:
        """The leases of this store that this process holds now."""

    def release_all() -> int:
        """Release every lease this process holds in this store; return how many."""

    def get_note(name: str) -> bytes | None:
        """The bytes last stored with ``set_note`` for ``name``, or None.

        Notes outlive the lock: zlock records the last commit made under a
        lock there.
        """

    def set_note(name: str, value: bytes) -> None:
        """Store a small bytes value for ``name`` (kept for an hour at least)."""

    def remove_note(name: str) -> None:
        """Forget ``name``'s note."""

    def close() -> None:
        """Drop connections and file handles (the store stays usable)."""
