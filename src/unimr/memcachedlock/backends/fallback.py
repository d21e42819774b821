"""Memcached first, the file store while memcached is unreachable (the default).

Each acquisition tries the memcached server that owns the lock name.  If
that server refuses, times out or hangs, :class:`~.memcachedserver.MemcachedServer`
raises BackendUnavailable (it logs the outage once and fails fast for
``retry`` seconds, so waits stay bounded by the connect/read timeouts) and
the lock is taken in the lock directory instead.  When the server answers
again, the next acquisition uses it: the return is automatic.  A lease stays
with the store it was taken in, so its renewal and release go there.

The seam between the two stores
-------------------------------
While a process still holds a file lock taken during an outage, memcached may
come back and another process may take the same name there.  To make that
cheap case safe on one host, a lock taken in memcached is given back at once
if the name's lock file is held here (it costs one failed ``open`` when no
file exists).  What stays open:

* a process that still counts memcached as down (for at most ``retry``
  seconds after it came back) can take the file lock after that check;
* a file lock only excludes processes on the same host;
* when memcached goes away, a lock another process took there before is
  invisible (this process's own memcached leases are checked and respected).

In both cases two writers may run at once; ZODB's conflict detection is the
final guard and turns the overlap into a retried ConflictError, as without
any lock.  A dedicated memcached with ``-o temporary_ttl`` keeps outages rare.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Literal

from zope.interface import implementer

from .. import metrics
from ..config import Settings
from ..errors import BackendUnavailable
from ..interfaces import ICommitGate, IWaiterBoard
from ..lease import Lease
from .base import Backend, CommitPass, Warn
from .file import FileBackend
from .memcached import MemcachedBackend
from .memcachedlease import MemcachedLease
from .memcachedserver import MemcachedServer
from .records import Holder, Want

logger = logging.getLogger(__name__)

#: What inspection says when memcached cannot be read (``%s``: why).
_PARTIAL = "%s; showing the lock directory only"


@implementer(ICommitGate)
class FallbackCommitGate:
    """The primary's commit gate while memcached answers and the lock directory has nothing on the name.

    A lock or a note left in the lock directory by an outage sends optimistic
    commits the locked way (a failed ``open`` each when there is none), so
    they respect that holder and the first note written clears the old one.
    """

    def __init__(self, backend: FallbackBackend) -> None:
        self.backend = backend

    def enter(self, name: str) -> CommitPass | None:
        backend = self.backend
        if backend.held_in_files(name) or backend.secondary.get_note(name) is not None:
            return None
        try:
            return backend.primary.commit_gate.enter(name)
        except BackendUnavailable as exc:
            logger.debug("optimistic commit of %s takes the lock: %s", name, exc)
            return None

    def passing(self, name: str) -> int:
        try:
            return self.backend.primary.commit_gate.passing(name)
        except BackendUnavailable:
            return 0

    def drain(self, name: str, timeout: float) -> bytes | None:
        note = None
        try:
            note = self.backend.primary.commit_gate.drain(name, timeout)
        except BackendUnavailable as exc:
            logger.debug("commit gate of %s not drained: %s", name, exc)
        written_in_outage = self.backend.secondary.get_note(name)
        return written_in_outage if written_in_outage is not None else note


@implementer(IWaiterBoard)
class FallbackWaiterBoard:
    """memcached's waiter board while memcached answers, the lock directory's while it does not.

    Waiters announce themselves where the locks are taken, so processes take
    turns during an outage too.  An announcement made on the other side of
    the switch is not seen: that costs a waiter time, never safety.
    """

    def __init__(self, backend: FallbackBackend) -> None:
        self.primary = backend.primary.waiter_board
        self.secondary = backend.secondary.waiter_board

    def peek_want(self, name: str) -> tuple[bool, Want | None, bytes | None]:
        try:
            return self.primary.peek_want(name)
        except BackendUnavailable:
            return self.secondary.peek_want(name)

    def put_want(self, name: str, value: bytes, cas: bytes | None, add: bool) -> bool:
        try:
            return self.primary.put_want(name, value, cas, add)
        except BackendUnavailable:
            return self.secondary.put_want(name, value, cas, add)

    def drop_want(self, name: str, token: str) -> bool:
        """Withdraw from both sides (an announcement may have been made before memcached went away)."""
        dropped = self.secondary.drop_want(name, token)
        try:
            return self.primary.drop_want(name, token) or dropped
        except BackendUnavailable:
            return dropped

    def hand_record_over(self, lease: Lease, thread: threading.Thread, ttl: float) -> Want | Literal[False] | None:
        """By the store that holds ``lease``."""
        board = self.primary if isinstance(lease, MemcachedLease) else self.secondary
        return board.hand_record_over(lease, thread, ttl)


class FallbackBackend(Backend):
    """A memcached store backed up by a file store on this host."""

    kind = "fallback"
    #: See ``base.CAPABILITIES``: its primary's, and its own.
    capabilities = frozenset(("commit_gate", "notes", "waiter_board", "note_with_acquire", "note_with_release",
                              "expiring_leases", "multi_host", "outage_fallback"))
    commit_gate: FallbackCommitGate

    def __init__(self, primary: MemcachedBackend, secondary: FileBackend) -> None:
        self.primary = primary
        self.secondary = secondary
        self.commit_gate = FallbackCommitGate(self)
        self._board = FallbackWaiterBoard(self)
        for server in primary.servers:
            server.while_down = ("locking goes on in the lock directory %s until it answers again "
                                 "(processes on other hosts do not see those locks)" % secondary.directory)

    @classmethod
    def from_settings(cls, settings: Settings, create: bool = True) -> FallbackBackend:
        """``create=False`` (for inspection) never makes the lock directory."""
        return cls(MemcachedBackend.from_settings(settings), FileBackend.from_settings(settings, create))

    @property
    def waiter_board(self) -> FallbackWaiterBoard:
        """memcached's, and the lock directory's while memcached is unreachable."""
        return self._board

    def __repr__(self) -> str:
        return "<FallbackBackend %r then %r>" % (self.primary, self.secondary)

    @property
    def servers(self) -> list[MemcachedServer]:
        return self.primary.servers

    def acquire(self, name: str, ttl: float, with_note: bool = False) -> Lease | None:
        lease: Lease | None
        try:
            lease = self.primary.acquire(name, ttl, with_note)
        except BackendUnavailable as exc:
            logger.debug("lock %s tried in the lock directory: %s", name, exc)
            if self._held_in_memcached_here(name):
                return None
            lease = self.secondary.acquire(name, ttl)
            if lease is not None:
                metrics.record_fallback(name)
            return lease
        if lease is not None and self.held_in_files(name):
            logger.debug("lock %s is still held in the lock directory since an outage", name)
            lease.release()
            return None
        return lease

    def _held_in_memcached_here(self, name: str) -> bool:
        """True if a thread of this process took ``name`` in memcached before it went away.

        Such a holder is still working; letting a second thread in through the
        lock directory would make two.  Only scanned during outages.
        """
        return any(lease.name == name for lease in self.primary.held_leases())

    def held_in_files(self, name: str) -> bool:
        """True if somebody holds ``name`` in the lock directory (since an outage); False if it cannot be read."""
        try:
            return self.secondary.is_held(name)
        except BackendUnavailable:
            return False

    def may_be_available(self, name: str) -> bool:
        if not self.secondary.may_be_available(name):
            return False
        try:
            return self.primary.may_be_available(name)
        except BackendUnavailable:
            return True

    def holder(self, name: str, warn: Warn | None = None) -> Holder | None:
        """memcached's holder, else the lock directory's; an unreachable memcached holds nothing seen.

        With ``warn`` (inspection) an unreachable memcached is said through
        it, and is BackendUnavailable when the lock directory has no holder
        either: nobody can tell then whether the lock is held.
        """
        try:
            found = self.primary.holder(name)
        except BackendUnavailable as exc:
            in_files = self.secondary.holder(name)
            if warn is not None:
                if in_files is None:
                    raise
                warn(_PARTIAL % exc)
            return in_files
        return found if found is not None else self.secondary.holder(name)

    def list_locks(self, warn: Warn | None = None) -> list[Holder]:
        """Locks in every reachable memcached server and in the lock directory (an unreachable one said to ``warn``)."""
        holders: list[Holder] = []
        try:
            holders.extend(self.primary.list_locks())
        except BackendUnavailable as exc:
            if warn is None:
                logger.debug("listing memcached locks failed: %s", exc)
            else:
                warn(_PARTIAL % exc)
        holders.extend(self.secondary.list_locks())
        holders.sort(key=lambda h: h.acquired)
        return holders

    def break_lock(self, name: str, token: str | None = None) -> bool:
        """Remove ``name`` in memcached (if it answers) and in the lock directory; ``token`` as in both."""
        try:
            broken = self.primary.break_lock(name, token)
        except BackendUnavailable:
            broken = False
        return self.secondary.break_lock(name, token=token) or broken

    def release_all(self) -> int:
        return self.primary.release_all() + self.secondary.release_all()

    def held_leases(self) -> list[Lease]:
        return self.primary.held_leases() + self.secondary.held_leases()

    def get_note(self, name: str) -> bytes | None:
        """The note written during an outage if there is one, else memcached's.

        A note in the lock directory exists only while no later note reached
        memcached (``set_note`` removes it), so it is the newer one.
        """
        note = self.secondary.get_note(name)
        if note is not None:
            return note
        try:
            return self.primary.get_note(name)
        except BackendUnavailable:
            return None

    def set_note(self, name: str, value: bytes) -> None:
        try:
            self.primary.set_note(name, value)
        except BackendUnavailable:
            self.secondary.set_note(name, value)
        else:
            self.secondary.remove_note(name)

    def note_read_at_acquire(self, lease: Lease) -> tuple[bool, bytes | None]:
        """memcached's, for its lease, unless the lock directory has a note from an outage (``drain`` reads that)."""
        if lease.backend is not self.primary or self._outage_note(lease.name):
            return False, None
        return self.primary.note_read_at_acquire(lease)

    def defer_note(self, lease: Lease, value: bytes) -> bool:
        """With the release of ``lease`` in the store that took it, as ``set_note`` would store it.

        A memcached lease's note goes with its release; if memcached cannot be
        reached for it, into the lock directory (as ``set_note`` does).  False
        while the lock directory has a note from an outage: ``set_note``
        stores the new note in memcached and removes that one.
        """
        if lease.backend is self.secondary:
            return self.secondary.defer_note(lease, value)
        if not isinstance(lease, MemcachedLease) or self._outage_note(lease.name):
            return False
        if not self.primary.defer_note(lease, value):
            return False
        lease.note_undelivered = functools.partial(self._note_in_outage, lease.name)
        return True

    def _outage_note(self, name: str) -> bool:
        """True if the lock directory may have a note for ``name`` (a failed ``open`` when it has none)."""
        try:
            return self.secondary.get_note(name) is not None
        except BackendUnavailable:
            return True

    def _note_in_outage(self, name: str, value: bytes) -> None:
        try:
            self.secondary.set_note(name, value)
        except BackendUnavailable as exc:
            logger.warning("the note of lock %s could be stored neither in memcached nor in the lock directory "
                           "(%s): the next holder asks the storage or meets a ConflictError", name, exc)

    def remove_note(self, name: str) -> None:
        """Forget the note in the lock directory and in memcached (BackendUnavailable if it cannot be reached)."""
        self.secondary.remove_note(name)
        self.primary.remove_note(name)

    def close(self) -> None:
        self.primary.close()
        self.secondary.close()
