"""Reservations: a lock kept after a LockBusy for this thread's retry, and the keeper that frees unclaimed ones.

A lock a transaction could not use (its view was stale) is not released:
it is *reserved* for the thread's next transaction, which adopts it
without waiting.  A reservation's state is two things: the lease's
``renew_until`` (read by the renewer: a reserved lease is renewed until
then, and released after) and its place in this thread's keeper.  Every
transition is a method of :class:`Reservation`, which alone writes
``renew_until``:

* reserved (:meth:`Reservation.reserve`): ``renew_until`` at most
  :data:`RESERVE_FOR` seconds ahead, listed by the keeper;
* adopted (:meth:`Reservation.adopt`): claimed by a transaction, renewed
  while held (``renew_until`` None); promoted (:meth:`Reservation.promote`)
  to the lease its call asks for when held;
* expired (:meth:`Reservation.expire`): not claimed by the thread's next
  transaction, or too close to its end to be adopted: released
  (:meth:`Reservation.release`, which gives back any lock zlock holds).

The keeper is a transaction synchronizer, one per thread: when a
transaction begins it claims what is reserved and marked for it (see
:func:`claim_at_begin_with`), and after any transaction other than the
one that made a reservation ends, it expires that reservation.  It also
keeps policy on-conflict's runs of ConflictErrors (:class:`Streak`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

from ..errors import BackendUnavailable, NotHeld
from . import views
from .busy import conflicted
from .private import Transaction
from .taking import Entry, Request

try:
    import transaction as _transaction
except ImportError:  # zlock then behaves like rlock
    _transaction = None

logger = logging.getLogger(__name__)

#: Seconds an unclaimed reservation is kept before the renewer releases it.
RESERVE_FOR = 3.0
#: A reservation this close to its end is not adopted (the renewer may be releasing it).
ADOPT_MARGIN = 0.5


@dataclasses.dataclass(eq=False)
class Reservation:
    """``entry``'s lock, kept after a LockBusy in ``origin`` for this thread's next transaction."""

    entry: Entry
    origin: Transaction

    @classmethod
    def reserve(cls, entry: Entry, txn: Transaction, name: str) -> None:
        """Keep ``entry``'s lock for this thread's next transaction, at most RESERVE_FOR seconds."""
        entry.lease.renew_until = time.monotonic() + RESERVE_FOR
        register_keeper().reservations[name] = cls(entry, txn)

    def adopt(self) -> Entry | None:
        """The reserved entry if it is still ours and not about to be released, else None."""
        entry = self.entry
        until = entry.lease.renew_until
        if until is None or not entry.lease.held or time.monotonic() >= until - ADOPT_MARGIN:
            Reservation.release(entry)
            return None
        entry.lease.renew_until = None
        return entry

    def expire(self, name: str) -> None:
        """Not claimed by the thread's next transaction: release it."""
        logger.debug("reservation of lock %s not claimed by the next transaction: released", name)
        Reservation.release(self.entry)

    @staticmethod
    def promote(entry: Entry) -> None:
        """Extend an adopted reservation's lease to this call's ``timeout`` if it asks for more."""
        if entry.request.timeout > entry.lease.ttl:
            try:
                entry.lease.renew(entry.request.timeout)
            except BackendUnavailable as exc:
                logger.debug("could not extend lock %s now (%s): the renewer retries", entry.lock.name, exc)

    @staticmethod
    def release(entry: Entry) -> None:
        """Give the lock back.  Idempotent; never raises (transaction hooks call it)."""
        try:
            entry.lease.renew_until = None
            entry.lock.release()
        except NotHeld:
            pass
        except Exception:
            logger.exception("releasing zlock %s failed", entry.lock.name)


@dataclasses.dataclass(eq=False)
class Streak:
    """ConflictErrors in a row of this thread's transactions that used a key (policy on-conflict).

    ``txn`` is the transaction the run is in.  After a ConflictError is
    counted the run waits ``until`` for the thread's next transaction to
    begin; that transaction carries it on (``until`` 0: :meth:`carry_over`)
    however long it runs, and ends it unless it fails with a ConflictError too.
    """

    count: int = 0
    until: float = 0.0
    txn: Transaction | None = None

    def counted_in(self, txn: Transaction) -> bool:
        """True if ``txn``'s ConflictError is counted already (not a run ``txn`` only carries)."""
        return self.txn is txn and bool(self.until)

    def add(self, txn: Transaction, until: float) -> None:
        """Count ``txn``'s ConflictError; the run then waits ``until`` for the next transaction to begin."""
        self.count += 1
        self.until = until
        self.txn = txn

    def waits_at(self, now: float) -> bool:
        """True if the run still waits for the thread's next transaction at ``now``."""
        return self.until > now

    def carry_over(self, txn: Transaction) -> None:
        """``txn`` began in time: it carries the run on, however long it runs."""
        self.txn, self.until = txn, 0.0

    def carried_by(self, txn: Transaction) -> bool:
        """True if ``txn`` carries the run on without having counted a ConflictError."""
        return self.txn is txn and not self.until


class ReservationKeeper:
    """A transaction synchronizer: claims reservations and marks at begin, frees unclaimed ones.

    Registered once per thread with ``transaction.manager``.  When a
    transaction begins, the locks reserved for it (after a LockBusy) are
    adopted and the locks marked by a ConflictError (policy ``on-conflict``)
    are taken, then the view is brought forward, so the retry holds the lock
    before it reads anything.  After any transaction other than the one that
    made a reservation ends, that reservation is released.  Never raises.
    """

    def __init__(self) -> None:
        self.reservations: dict[str, Reservation] = {}
        self.marks: dict[str, Request] = {}
        self.streaks: dict[str, Streak] = {}
        #: True while ``registerSynch`` runs: it calls newTransaction for the transaction in progress.
        self.joining = False
        #: The thread whose locks these are: a transaction manager shared by threads calls every
        #: thread's keeper, and only the thread's own transactions may adopt its reservations.
        self.thread = threading.get_ident()

    def claim(self, name: str) -> Reservation | None:
        """This thread's reservation of lock ``name``, taken out of the keeper's hands, if there is one."""
        return self.reservations.pop(name, None)

    def newTransaction(self, txn: Transaction) -> None:
        """Mark where the views begin; take this thread's reserved and marked locks for ``txn``.

        Not a view's beginning when ``registerSynch`` calls it for the
        transaction in progress: the transaction may have used objects, so no
        mark is made (its uses stay unknown, and its view is never moved).
        """
        if threading.get_ident() != self.thread:
            return
        try:
            if not self.joining:
                views.mark_views(txn)
            _carry_streaks(txn, self)
            for claim in _claims_at_begin:
                claim(txn, self)
        except Exception:
            logger.exception("taking zlocks at the beginning of a transaction failed")

    def beforeCompletion(self, txn: Transaction) -> None:
        """Nothing to do before a transaction ends."""

    def afterCompletion(self, txn: Transaction) -> None:
        """End the runs of ConflictErrors ``txn`` did not continue; release earlier reservations.

        ZODB begins the connections' next views here too (for callers that
        never call ``begin()``): mark where they begin.
        """
        if threading.get_ident() != self.thread:
            return
        try:
            views.mark_views(txn)
            _end_streaks(txn, self)
            for name, reservation in list(self.reservations.items()):
                if reservation.origin is not txn:
                    del self.reservations[name]
                    reservation.expire(name)
        except Exception:
            logger.exception("releasing unclaimed zlock reservations failed")


#: What a transaction that begins takes for this thread: set by :func:`claim_at_begin_with`.
_claims_at_begin: list[Callable[[Transaction, ReservationKeeper], None]] = []


def claim_at_begin_with(claim: Callable[[Transaction, ReservationKeeper], None]) -> None:
    """The keeper calls ``claim(txn, keeper)`` when a transaction begins: to adopt and take its locks.

    Given by the on-conflict policy, which holds locks and so sits above this module.
    """
    _claims_at_begin[:] = [claim]


class Manager(Protocol):
    """What zlock calls on a transaction manager (``transaction.manager`` or a ``TransactionManager``)."""

    def get(self) -> Transaction:
        """The current transaction; NoTransaction if there is none in explicit mode."""

    def registerSynch(self, synch: ReservationKeeper) -> None:
        """Call ``synch``'s newTransaction, beforeCompletion and afterCompletion from now on."""


class _ThreadState(threading.local):
    def __init__(self) -> None:
        self.keeper = ReservationKeeper()
        #: The transaction managers the keeper is a synchronizer of.
        self.registered: weakref.WeakSet[Manager] = weakref.WeakSet()


_state = _ThreadState()


def thread_keeper() -> ReservationKeeper:
    """This thread's keeper (a synchronizer once :func:`register_keeper` made it one)."""
    return _state.keeper


def register_keeper(manager: Manager | None = None) -> ReservationKeeper:
    """This thread's keeper, a synchronizer of ``manager`` (default ``transaction.manager``) from now on."""
    keeper = _state.keeper
    synchronizing: Manager = _transaction.manager if manager is None else manager
    if synchronizing not in _state.registered:
        keeper.joining = True
        try:
            synchronizing.registerSynch(keeper)
        finally:
            keeper.joining = False
        _state.registered.add(synchronizing)
    return keeper


def _carry_streaks(txn: Transaction, keeper: ReservationKeeper) -> None:
    """The transaction that begins carries on the runs of ConflictErrors that waited for it; the rest end."""
    if not keeper.streaks:
        return
    now = time.monotonic()
    for name, streak in list(keeper.streaks.items()):
        if streak.waits_at(now):
            streak.carry_over(txn)
        else:
            del keeper.streaks[name]


def _end_streaks(txn: Transaction, keeper: ReservationKeeper) -> None:
    """End the runs ``txn`` carried without counting a ConflictError, unless it failed with one.

    A failed commit ends its transaction before its after-commit hooks
    count the ConflictError: that count comes later, and a carried run that
    no hook counted ends when the next transaction begins.
    """
    if not keeper.streaks or conflicted():
        return
    for name, streak in list(keeper.streaks.items()):
        if streak.carried_by(txn):
            del keeper.streaks[name]


__all__ = ["Reservation", "Streak", "ReservationKeeper", "Manager", "thread_keeper", "register_keeper",
           "claim_at_begin_with", "RESERVE_FOR", "ADOPT_MARGIN"]
