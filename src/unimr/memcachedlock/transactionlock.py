"""zlock: a lock held until the ZODB transaction ends, that turns contention into one cheap retry.

Why not simply ``lock``?  Two ZEO clients that write the same hot object
(a catalog, a counter) both do their expensive work and one of them loses it
to a ConflictError at commit.  Serialising the *call* does not help: the
lock is released before the commit, and a connection's view of the database
is fixed when its transaction begins, so the second writer works on the state
from before the first one's commit and conflicts anyway.  zlock therefore

1. holds the lock from the first call in a transaction until that transaction
   ends (after-commit and after-abort hooks release it; later calls in the same
   transaction re-enter it);
2. records, when a transaction commits under the lock, the tid it committed
   (a *note* in the lock store that outlives the lock);
3. after taking the lock, compares that tid with the transaction's view.  If
   the view is older, the ZEO client is brought up to date (one server round
   trip if the commit has not arrived yet) and the view is moved forward in
   place, provided the transaction cannot have seen the old state of
   anything the newer commits changed (``viewrefresh``; never with
   ``move_view=False``): the function then runs on the current state, and no
   work is retried.  Otherwise the function is not
   run: the lock is kept *reserved* for this thread and :class:`LockBusy` --
   a ``ConflictError`` -- asks ``transaction.manager.attempts()``, ``run()``
   or the Zope publisher to retry.  The retry adopts the reservation without
   waiting and sees the commit.

A reservation that no retry claims is freed at the end of the thread's next
transaction, or after :data:`RESERVE_FOR` seconds (plus at most one renewal
period) at the latest.  Where each view begins is marked by this module's
transaction synchronizer, registered for a thread when it first uses zlock:
a thread's first transaction therefore cannot move its view (LockBusy).

That is policy ``always``.  Policy ``adaptive``, the default, is
``always`` while a key's writers meet and ``on-conflict`` (``conflicts=1``)
while they do not, per process (see ``adaptive``).  Policy ``on-conflict`` is
optimistic: the function runs unlocked, and a before-commit hook
passes the key's *commit gate* (``interfaces.ICommitGate``): optimistic
commits go in together but never while the lock is held, and a new holder
waits for those that passed before it, so no commit of the key's objects
comes between a holder's view and its commit.  Two store round trips: into
the gate (reading the note: exclusive writers, see
``_check_exclusive_commits``) and out of it (appending the commit's tid).
Stores without a gate take the lock at commit instead.  ZODB's
conflict resolution decides as usual.  After ``conflicts`` ConflictErrors in
a row (default 1; 3 makes Zope's fourth and last try the locked one) the key
is *marked* for this thread, and the thread's next
transaction takes the lock when it begins and brings its view forward (a
server round trip and a poll of invalidations) before it reads anything.  That
retry holds the lock for its whole transaction, so no other commit of the
key's objects can come between its view and its commit.  See docs/zlock.rst.

Inside a transaction a wait for the lock is bounded by :func:`txn_wait`
(``MEMCACHEDLOCK_TXN_WAIT``, default 5 s): a longer wait raises LockBusy (a
ConflictError: the publisher retries with its normal back-off) instead of
blocking a worker thread until the holder's lease runs out.

Outside a transaction that has a ZODB connection (scripts, threads without a
database), or without ZODB and ``transaction`` installed, zlock holds the lock
only for the call, re-entrantly, like ``rlock``.

The view is read from the connection's MVCC adapter (``_start``, the tid the
snapshot reads before) and the connections from the transaction's
synchronizers and resources: ZODB 5/6 and transaction 3+ offer no public API
for either.  Notes are keyed by an identity of the storage that every client
shares (a ZEO server's address and storage name); a storage local to the
process (a temporary storage, a local mount) is keyed with the process's
identity, so its tids are never compared across clients.  RelStorage has no
such view tid: policy ``always`` then only serialises (one warning at first
use); policy ``on-conflict`` needs no tid, RelStorage polls at every begin.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

from . import adaptive, early, metrics, notes, viewrefresh, zodbprivate
from .backends.base import CommitPass
from .config import _seconds
from .decorators import GetKey, P, R, locking_decorator, rlocks_held, run_rlocked
from .errors import BackendUnavailable, MemcachedLockError, NotHeld
from .keys import lock_name, shown
from .lease import Lease
from .locks import Lock
from .options import (
    DEFAULT_CONFLICTS,
    DEFAULT_INTERVAL,
    DEFAULT_POLICY,
    DEFAULT_TIMEOUT,
    POLICIES,
    LockOptions,
)
from .registry import get_backend
from .zodbprivate import Connection, Storage, Transaction

try:
    import transaction as _transaction
    from transaction.interfaces import NoTransaction, TransientError
except ImportError:  # zlock then behaves like rlock
    _transaction = None
    NoTransaction = TransientError = None

try:
    from ZODB.Connection import Connection as _Connection
    from ZODB.POSException import ConflictError
    from ZODB.utils import p64, u64
except ImportError:  # zlock then behaves like rlock
    _Connection = ConflictError = p64 = u64 = None

try:
    from ZEO.ClientStorage import ClientStorage as _ClientStorage
except ImportError:
    _ClientStorage = None

logger = logging.getLogger(__name__)

#: Seconds an unclaimed reservation is kept before the renewer releases it.
RESERVE_FOR = 3.0
#: A reservation this close to its end is not adopted (the renewer may be releasing it).
ADOPT_MARGIN = 0.5
#: Longest wait for this ZEO client to receive the last commit made under the lock.
CATCH_UP_TIMEOUT = 2.0

#: Seconds a conflict mark, or a run of ConflictErrors (see ``on-conflict``), waits for this thread's
#: next transaction to begin (Zope's back-off before its last try is at most 4 s).
MARK_FOR = 5.0
#: Default of ``MEMCACHEDLOCK_TXN_WAIT``: longest wait for a lock inside a transaction.
DEFAULT_TXN_WAIT = 5.0
#: Longest wait of a new holder for the optimistic commits that passed the gate before it.
DRAIN_WAIT = 2.0
#: A note with this many entries is written whole again by the next optimistic commit.
COMPACT_AT = 8


def _retry_error() -> type[Exception]:
    """What LockBusy is besides a MemcachedLockError: a ConflictError (so that every retry loop retries it),
    else a TransientError (transaction without ZODB), else a plain Exception (neither installed)."""
    found: type[Exception] = Exception
    if ConflictError is not None:
        found = ConflictError
    elif TransientError is not None:
        found = TransientError
    return found


# The second base is chosen at import (ZODB and transaction are optional and ship no types): mypy cannot follow it.
class LockBusy(MemcachedLockError, _retry_error()):  # type: ignore[misc]
    """The lock was busy or this transaction's view is older than its last commit: retry.

    A ``ConflictError``, so ``transaction.manager.attempts()``, ``run()``
    and the Zope publisher retry the transaction, and Zope code that
    re-raises ConflictErrors and swallows other exceptions passes it on.
    The lock stays reserved for this thread's retry.  Without ZODB a
    ``TransientError``; without ``transaction`` either, a MemcachedLockError only.
    """

    def __init__(self, message: str | None = None, key: str | bytes | int | None = None, reserved: bool = False,
                 **kw: object) -> None:
        if ConflictError is not None:
            ConflictError.__init__(self, message=message, **kw)
        else:
            super().__init__(message)
            self.message = message
        self.key = key
        #: True if the lock is kept for this thread's retry (no back-off needed).
        self.reserved = reserved


@dataclasses.dataclass(eq=False)
class _Request:
    """What a call asks of a lock: taken now, at commit (``on-conflict``), or, marked (``until``), at begin."""

    key: str | bytes | int
    timeout: float
    interval: float
    wait: float
    conflicts: int = DEFAULT_CONFLICTS
    until: float = 0.0
    #: Asked with policy adaptive: what its transactions meet is recorded (``adaptive.record``).
    adaptive: bool = False


@dataclasses.dataclass(eq=False)
class _Entry:
    """One lock this thread holds (or has reserved) for a transaction, taken for ``request``."""

    request: _Request
    lock: Lock
    lease: Lease
    note: dict[str, bytes]
    policy: str = "always"


@dataclasses.dataclass(eq=False)
class _Reservation:
    entry: _Entry
    origin: Transaction


@dataclasses.dataclass(eq=False)
class _Streak:
    """ConflictErrors in a row of this thread's transactions that used a key (policy on-conflict).

    ``txn`` is the transaction the run is in.  After a ConflictError is
    counted the run waits ``until`` for the thread's next transaction to
    begin; that transaction carries it on (``until`` 0) however long it runs,
    and ends it unless it fails with a ConflictError too.
    """

    count: int = 0
    until: float = 0.0
    txn: Transaction | None = None


class _ReservationKeeper:
    """A transaction synchronizer: claims reservations and marks at begin, frees unclaimed ones.

    Registered once per thread with ``transaction.manager``.  When a
    transaction begins, the locks reserved for it (after a LockBusy) are
    adopted and the locks marked by a ConflictError (policy ``on-conflict``)
    are taken, then the view is brought forward, so the retry holds the lock
    before it reads anything.  After any transaction other than the one that
    made a reservation ends, that reservation is released.  Never raises.
    """

    def __init__(self) -> None:
        self.reservations: dict[str, _Reservation] = {}
        self.marks: dict[str, _Request] = {}
        self.streaks: dict[str, _Streak] = {}
        #: True while ``registerSynch`` runs: it calls newTransaction for the transaction in progress.
        self.joining = False
        #: The thread whose locks these are: a transaction manager shared by threads calls every
        #: thread's keeper, and only the thread's own transactions may adopt its reservations.
        self.thread = threading.get_ident()

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
                _mark_views(txn)
            _carry_streaks(txn, self)
            _claim_at_begin(txn, self)
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
            _mark_views(txn)
            _end_streaks(txn, self)
            for name, reservation in list(self.reservations.items()):
                if reservation.origin is not txn:
                    del self.reservations[name]
                    logger.debug("reservation of lock %s not claimed by the next transaction: released", name)
                    _release(reservation.entry)
        except Exception:
            logger.exception("releasing unclaimed zlock reservations failed")


class _Manager(Protocol):
    """What zlock calls on a transaction manager (``transaction.manager`` or a ``TransactionManager``)."""

    def get(self) -> Transaction:
        """The current transaction; NoTransaction if there is none in explicit mode."""

    def registerSynch(self, synch: _ReservationKeeper) -> None:
        """Call ``synch``'s newTransaction, beforeCompletion and afterCompletion from now on."""


class _ThreadState(threading.local):
    def __init__(self) -> None:
        self.keeper = _ReservationKeeper()
        #: The transaction managers the keeper is a synchronizer of.
        self.registered: weakref.WeakSet[_Manager] = weakref.WeakSet()


_state = _ThreadState()

#: Key of this module's data on a transaction (``Transaction.data`` keys by id()).
_TXN_DATA_KEY = object()


@dataclasses.dataclass(eq=False)
class _TxnLocks:
    """This thread's locks of one transaction, by lock name (kept in ``Transaction.data``)."""

    #: Held until the transaction ends (its after-commit and after-abort hooks release them).
    held: dict[str, _Entry] = dataclasses.field(default_factory=dict)
    #: Policy on-conflict: taken at commit by the before-commit hook.
    pending: dict[str, _Request] = dataclasses.field(default_factory=dict)
    #: Marked by a ConflictError but busy when the transaction began: the call takes them.
    marked: dict[str, _Request] = dataclasses.field(default_factory=dict)
    #: Policy on-conflict: committing through the lock store's commit gate, lock not taken.
    passes: dict[str, CommitPass] = dataclasses.field(default_factory=dict)


def _mark_views(txn: Transaction) -> None:
    """The views of ``txn``'s connections begin now: nothing has been used on them (see viewrefresh)."""
    for conn in _connections(txn):
        viewrefresh.mark_view_begin(conn)


def _register_keeper(manager: _Manager | None = None) -> _ReservationKeeper:
    """This thread's keeper, a synchronizer of ``manager`` (default ``transaction.manager``) from now on."""
    keeper = _state.keeper
    synchronizing: _Manager = _transaction.manager if manager is None else manager
    if synchronizing not in _state.registered:
        keeper.joining = True
        try:
            synchronizing.registerSynch(keeper)
        finally:
            keeper.joining = False
        _state.registered.add(synchronizing)
    return keeper


def txn_wait() -> float:
    """Longest wait for a lock inside a transaction: ``MEMCACHEDLOCK_TXN_WAIT`` seconds (default 5)."""
    return _seconds("MEMCACHEDLOCK_TXN_WAIT", os.environ.get("MEMCACHEDLOCK_TXN_WAIT"), DEFAULT_TXN_WAIT)


def _current_transaction(manager: _Manager | None = None) -> Transaction | None:
    """The current transaction of ``manager`` (default ``transaction.manager``), or None (none in explicit mode)."""
    if _transaction is None or _Connection is None:
        return None
    current: _Manager = _transaction.manager if manager is None else manager
    try:
        return current.get()
    except NoTransaction:
        return None


def manager_of(args: tuple[object, ...], kwargs: dict[str, object]) -> _Manager | None:
    """The transaction manager of the first persistent argument whose connection does not use
    ``transaction.manager`` (a connection opened with a ``TransactionManager`` of its own), else None.

    zlock finds the transaction to hold a lock for through the objects it is
    called with: a method of a persistent object, or a function given one.
    Reading ``_p_jar`` does not load the object.
    """
    if _transaction is None:
        return None
    default = _transaction.manager
    for value in itertools.chain(args, kwargs.values()):
        manager: _Manager | None = getattr(getattr(value, "_p_jar", None), "transaction_manager", None)
        if manager is not None and manager is not default:
            return manager
    return None


def _connections(txn: Transaction, joined_only: bool = False) -> list[Connection]:
    """The ZODB connections of ``txn``: joined ones, then (unless ``joined_only``) those synchronised with it."""
    found: list[Connection] = []

    def collect(obj: object) -> None:
        if isinstance(obj, _Connection) and obj not in found and zodbprivate.normal_storage(obj) is not None:
            found.append(obj)

    for resource in zodbprivate.resources(txn):
        collect(resource)
    if not joined_only:
        zodbprivate.each_synchronizer(txn, collect)
    return found


def storage_identity(conn: Connection) -> str:
    """A name of the connection's storage that every client of a shared storage computes alike.

    A ZEO storage is named by its server address and storage name (its
    ``sortKey()``, which two-phase commit already requires to be the same in
    every client).  Any other storage is treated as local to this process
    (a temporary storage, a local mount): its name includes the host and
    process id, so its tids are never compared with another process's.
    """
    storage = conn.db().storage
    if _ClientStorage is not None and isinstance(storage, _ClientStorage):
        return "zeo:%s" % (storage.sortKey(),)
    return "%s%x" % (notes.local_identity_prefix(), id(storage))


def _view_start(conn: Connection) -> bytes | None:
    """The tid this connection's snapshot reads before (its view), or None if unknown."""
    return zodbprivate.view_start(zodbprivate.normal_storage(conn))


def _committed_tid(conn: Connection) -> bytes | None:
    """A tid at or after this connection's last commit that this client has received."""
    candidates: list[bytes] = []
    ltid = zodbprivate.last_committed(zodbprivate.normal_storage(conn))
    if ltid is not None:
        candidates.append(ltid)
    start = _view_start(conn)
    if start is not None and u64(start) > 0:
        candidates.append(p64(u64(start) - 1))
    return max(candidates) if candidates else None


def _read_note(lock: Lock) -> dict[str, bytes]:
    """The note of a lock just taken, read once the optimistic commits that passed before have left."""
    backend = lock.backend
    lease = lock.lease
    if lease is not None and lease.backend is backend:
        known, note = backend.note_read_at_acquire(lease)
        if known:
            return notes.decode_note(note)
    try:
        gate = backend.commit_gate
        if gate is not None:
            try:
                return notes.decode_note(gate.drain(lock.name, DRAIN_WAIT))
            except BackendUnavailable as exc:
                logger.debug("commit gate of lock %s not drained (%s)", lock.name, exc)
        return notes.decode_note(backend.get_note(lock.name))
    except BackendUnavailable as exc:
        logger.debug("cannot read the note of lock %s (%s): the storage is asked instead", lock.name, exc)
        return {}


_unchecked_warned: set[str] = set()


def _warn_unchecked(connections: list[Connection], name: str) -> None:
    """One warning per storage class whose view zlock cannot check (RelStorage)."""
    for conn in connections:
        kind = type(zodbprivate.normal_storage(conn)).__name__
        if _view_start(conn) is None and kind not in _unchecked_warned:
            _unchecked_warned.add(kind)
            logger.warning(
                "zlock %s (policy always) cannot check the view of %s storages: a transaction that "
                "takes the lock after it began may still meet a ConflictError at commit (ZODB detects "
                "it, nothing is lost); policy on-conflict does not need the check", name, kind)


def _commits_since_views(connections: list[Connection], note: dict[str, bytes], exclusive: bool = False
                         ) -> list[tuple[Connection, bytes]]:
    """The connections whose view lacks a commit made under the lock (``exclusive``: policy always), and its tid.

    Where the note cannot tell (it was forgotten, or never reached back to
    the view: ``notes``), the storage is asked instead: after a round trip
    to its server, any commit since the view began counts, as if made under
    the lock.  A storage without a view tid (RelStorage) is not checked.
    """
    judge = notes.exclusive_commits_since if exclusive else notes.commits_since
    newer: list[tuple[Connection, bytes]] = []
    for conn in connections:
        start = _view_start(conn)
        if start is None:
            continue
        verdict, tid = judge(note, storage_identity(conn), start)
        if verdict == notes.UNKNOWN:
            storage = conn.db().storage
            _ping(storage)
            last = storage.lastTransaction()
            verdict, tid = (notes.STALE, last) if last >= start else (notes.FRESH, None)
            logger.debug("lock note says nothing of %s since tid %s: the storage's last tid %s is %s",
                         storage_identity(conn), start.hex(), last.hex(), verdict)
        if verdict == notes.STALE and tid is not None:  # a stale verdict always names its tid
            newer.append((conn, tid))
    return newer


def _ping(storage: Storage) -> bool:
    """One server round trip: afterwards every commit made before it has reached this client.

    False if the storage has no server to ask (not ZEO) or the ping failed.
    """
    ping = getattr(storage, "ping", None)
    if callable(ping):
        try:
            ping()
            return True
        except Exception as exc:
            logger.debug("ping of %s failed: %s", storage, exc)
    return False


def _catch_up(stale: list[tuple[Connection, bytes]]) -> None:
    """Make sure this client has received the commits in ``stale``, so a retry sees them.

    A ZEO client receives invalidations asynchronously; a ``ping`` is a server
    round trip after which every commit made before it has arrived.  Bounded
    by CATCH_UP_TIMEOUT; a client that cannot catch up just gets another retry.
    """
    deadline = time.monotonic() + CATCH_UP_TIMEOUT
    for conn, tid in stale:
        storage = conn.db().storage
        if storage.lastTransaction() >= tid:
            continue
        _ping(storage)
        pause = 0.0005
        while storage.lastTransaction() < tid:
            now = time.monotonic()
            if now >= deadline:
                logger.debug(
                    "client of %s has not received tid %s after %.1fs", storage, tid.hex(), CATCH_UP_TIMEOUT
                )
                return
            time.sleep(min(pause, deadline - now))
            pause = min(0.01, pause * 2)


def _refresh_view(txn: Transaction) -> None:
    """Bring the views of ``txn``'s connections forward: at begin, before anything is read.

    A round trip to each ZEO server first (so every commit made before it, in
    particular the previous holder's, has arrived), then the connection's own
    begin-of-transaction poll (``newTransaction``: invalidate what changed,
    advance the view).  After a ping the poll does not sync: a ZEO client's
    sync is that same ping (``server_sync=True``) or nothing.  A storage
    without a ping syncs there (RelStorage polls its database).
    """
    for conn in _connections(txn):
        pinged = _ping(conn.db().storage)
        conn.newTransaction(txn, not pinged)


def _release(entry: _Entry) -> None:
    """Give the lock back.  Idempotent; never raises (transaction hooks call it)."""
    try:
        entry.lease.renew_until = None
        entry.lock.release()
    except NotHeld:
        pass
    except Exception:
        logger.exception("releasing zlock %s failed", entry.lock.name)


def _conflicted() -> bool:
    """True if the exception being handled is a ConflictError that zlock did not raise itself.

    Transaction hooks run inside the ``except`` block of a failed commit or of
    the caller's abort, so ``sys.exc_info()`` tells why the transaction failed.
    """
    exc = sys.exc_info()[1]
    return ConflictError is not None and isinstance(exc, ConflictError) and not isinstance(exc, LockBusy)


def _mark(name: str, request: _Request, txn: Transaction) -> None:
    """Count ``txn``'s ConflictError for lock ``name``; after ``request.conflicts`` in a row, mark it.

    A mark lets this thread's next transaction take the lock when it begins.
    The run of ConflictErrors lasts while each of the thread's next
    transactions begins within MARK_FOR seconds of the last ConflictError
    and fails with one too (a try may run as long as it needs); once it is
    long enough, every further ConflictError marks the key again.
    """
    keeper = _register_keeper()
    streak = keeper.streaks.setdefault(name, _Streak())
    if streak.txn is txn and streak.until:
        return  # counted already: an after-commit and an after-abort hook both see a failed commit
    _learn(request, name, met=True)
    now = time.monotonic()
    streak.count += 1
    streak.until = now + MARK_FOR
    streak.txn = txn
    if streak.count < request.conflicts:
        logger.debug("ConflictError %d of %d under optimistic zlock %s: the retry runs optimistically",
                     streak.count, request.conflicts, name)
        return
    request.until = now + MARK_FOR
    keeper.marks[name] = request
    logger.debug("ConflictError under optimistic zlock %s: the retry takes the lock at begin", name)


def _learn(request: _Request, name: str, met: bool) -> None:
    """Policy adaptive: an optimistic transaction on lock ``name`` ended, having ``met`` a writer or not."""
    if request.adaptive:
        adaptive.record(name, locked=False, met=met)


def retry_will_lock() -> bool:
    """True if this thread's next transaction will take a lock at begin (a mark or a reservation)."""
    now = time.monotonic()
    keeper = _state.keeper
    return any(m.until > now for m in keeper.marks.values()) or bool(keeper.reservations)


#: Non-empty while notes cannot be written: one warning per outage, not per commit.
_note_failures: set[bool] = set()


def _committed_tids(txn: Transaction, policy: str) -> dict[str, bytes]:
    """The note entries of the commit ``txn`` just made: every commit, and an exclusive one apart."""
    tids: dict[str, bytes] = {}
    for conn in _connections(txn, joined_only=True):
        tid = _committed_tid(conn)
        if tid is not None:
            identity = storage_identity(conn)
            tids[identity] = tid
            if policy == "always":
                tids[notes.EXCLUSIVE + identity] = tid
    return tids


def _untouched(txn: Transaction) -> dict[str, bytes]:
    """The storages ``txn`` used without changing, each with the tid just above its last one.

    Written by a locked commit as where the note's record of such a storage
    begins: nothing can commit under a held lock, so every later commit
    under it is recorded.
    """
    found: dict[str, bytes] = {}
    for conn in _connections(txn):
        last = conn.db().storage.lastTransaction()
        if _view_start(conn) is not None:
            found[storage_identity(conn)] = p64(u64(last) + 1)
    return found


def _write_note(entry: _Entry, txn: Transaction) -> None:
    """Record the commit just made under the lock (the whole note: nobody else writes it now)."""
    tids = _committed_tids(txn, entry.policy)
    if tids:
        fresh = notes.with_since(entry.note, tids, _untouched(txn))
        value = notes.encode_note(notes.merge_note(entry.note, fresh))
        backend = entry.lock.backend
        # Stored in the release's round trip, just before the lock is freed, where the store can.
        if entry.lease.backend is not backend or not backend.defer_note(entry.lease, value):
            backend.set_note(entry.lock.name, value)
        _note_failures.clear()


def _after_commit(status: bool, entry: _Entry, txn: Transaction) -> None:
    """Record the commit's tid with the lock (if it succeeded), then release."""
    try:
        if status and entry.lease.held:
            _write_note(entry, txn)
        elif not status:
            _mark_if_conflicted(entry, txn)
    except BackendUnavailable as exc:
        # The store's own outage warning was logged once; say once what it costs here.
        log = logger.debug if _note_failures else logger.warning
        _note_failures.add(True)
        log("could not record the commit made under lock %s (%s): the next holder may "
            "run on an older view and meet a ConflictError", entry.lock.name, exc)
    except Exception:
        logger.exception("could not record the commit made under lock %s", entry.lock.name)
    finally:
        _release(entry)


def _mark_if_conflicted(entry: _Entry, txn: Transaction) -> None:
    """Policy on-conflict: count a ConflictError; after enough in a row the retry locks at begin."""
    if entry.policy == "on-conflict" and _conflicted():
        _mark(entry.lock.name, entry.request, txn)


def _after_abort(entry: _Entry, txn: Transaction) -> None:
    try:
        _mark_if_conflicted(entry, txn)
    except Exception:
        logger.exception("could not mark lock %s for the retry", entry.lock.name)
    finally:
        _release(entry)


def _locks_of(txn: Transaction) -> _TxnLocks:
    try:
        locks = txn.data(_TXN_DATA_KEY)
    except KeyError:
        locks = None
    if not isinstance(locks, _TxnLocks):  # nothing else is kept under this module's key
        locks = _TxnLocks()
        txn.set_data(_TXN_DATA_KEY, locks)
    return locks


def _hold(txn: Transaction, name: str, entry: _Entry) -> None:
    """``entry`` is held for ``txn`` from now until it ends."""
    _promote(entry)
    txn.addAfterCommitHook(_after_commit, (entry, txn))
    txn.addAfterAbortHook(_after_abort, (entry, txn))
    _locks_of(txn).held[name] = entry


def _adopt(reservation: _Reservation) -> _Entry | None:
    """The reserved entry if it is still ours and not about to be released, else None."""
    entry = reservation.entry
    until = entry.lease.renew_until
    if until is None or not entry.lease.held or time.monotonic() >= until - ADOPT_MARGIN:
        _release(entry)
        return None
    entry.lease.renew_until = None
    return entry


def _busy(key: str | bytes | int, timeout: float, waited: float) -> LockBusy:
    return LockBusy(
        message="lock %s is busy: waited %.1fs inside a transaction (MEMCACHEDLOCK_TXN_WAIT) while another "
        "transaction holds it (lease %gs); retry" % (shown(key), waited, timeout),
        key=key,
    )


def _acquire(the_lock: Lock, key: str | bytes | int, timeout: float, wait: float,
             before_waiting: Callable[[], None] | None = None) -> None:
    """Acquire within ``min(wait, txn_wait())`` seconds, else LockBusy naming the configured lease.

    ``before_waiting`` is called once if the lock is busy at first, before the wait.
    """
    started = time.monotonic()
    limit = min(wait, txn_wait())
    if before_waiting is not None:
        if the_lock.acquire(blocking=False):
            return
        before_waiting()
        limit = max(0.0, limit - (time.monotonic() - started))
    if not the_lock.acquire(timeout=limit):
        metrics.record_timeout(the_lock.name)
        raise _busy(key, timeout, time.monotonic() - started)


def _take(request: _Request, policy: str, before_waiting: Callable[[], None] | None = None) -> _Entry:
    """Acquire (bounded wait) with the full lease and read the lock's note: every path that takes a lock.

    The full lease at once, as at commit and at begin: a short lease promoted
    once the view is found fresh cost a renewal (two round trips) and made the
    release take two more (a renewal drops the acquisition's cas).  A process
    that dies holding a reservation thus leaves the lock for the lease, as one
    that dies inside the function does.
    """
    the_lock = _NoteLock(request.key, request.timeout, request.interval)
    _acquire(the_lock, request.key, request.timeout, request.wait, before_waiting)
    try:
        note = _read_note(the_lock)
    except BaseException:
        the_lock.release()
        raise
    lease = the_lock.lease
    if lease is None:  # given back meanwhile by another thread (``release_all``): not held after all
        raise LockBusy(message="lock %s was released by another thread while it was being taken; retry"
                       % shown(request.key), key=request.key)
    return _Entry(request, the_lock, lease, note, policy)


class _NoteLock(Lock):
    """zlock's lock: the store reads the note and the commit gate with the acquisition, where it can."""

    __slots__ = ()
    reads_note = True


def _promote(entry: _Entry) -> None:
    """Extend an adopted reservation's lease to this call's ``timeout`` if it asks for more."""
    if entry.request.timeout > entry.lease.ttl:
        try:
            entry.lease.renew(entry.request.timeout)
        except BackendUnavailable as exc:
            logger.debug("could not extend lock %s now (%s): the renewer retries", entry.lock.name, exc)


def _reserve(entry: _Entry, txn: Transaction, name: str) -> None:
    """Keep ``entry``'s lock for this thread's next transaction, at most RESERVE_FOR seconds."""
    entry.lease.renew_until = time.monotonic() + RESERVE_FOR
    _register_keeper().reservations[name] = _Reservation(entry, txn)


def _carry_streaks(txn: Transaction, keeper: _ReservationKeeper) -> None:
    """The transaction that begins carries on the runs of ConflictErrors that waited for it; the rest end."""
    if not keeper.streaks:
        return
    now = time.monotonic()
    for name, streak in list(keeper.streaks.items()):
        if streak.until > now:
            streak.txn, streak.until = txn, 0.0
        else:
            del keeper.streaks[name]


def _end_streaks(txn: Transaction, keeper: _ReservationKeeper) -> None:
    """End the runs ``txn`` carried without counting a ConflictError, unless it failed with one.

    A failed commit ends its transaction before its after-commit hooks
    count the ConflictError: that count comes later, and a carried run that
    no hook counted ends when the next transaction begins.
    """
    if not keeper.streaks or _conflicted():
        return
    for name, streak in list(keeper.streaks.items()):
        if streak.txn is txn and not streak.until:
            del keeper.streaks[name]


def _claim_at_begin(txn: Transaction, keeper: _ReservationKeeper) -> None:
    """Adopt reservations and take marked locks for the transaction that begins, then refresh its view."""
    if not keeper.reservations and not keeper.marks:
        return
    taken = False
    for name, reservation in list(keeper.reservations.items()):
        if reservation.origin is txn or reservation.entry.policy != "on-conflict":
            continue  # policy always adopts at the call, after the caught-up begin
        del keeper.reservations[name]
        entry = _adopt(reservation)
        if entry is not None:
            _hold(txn, name, entry)
            taken = True
    now = time.monotonic()
    marks, keeper.marks = keeper.marks, {}
    locks = _locks_of(txn)
    for name in sorted(marks):
        request = marks[name]
        if request.until <= now or name in locks.held:
            continue
        try:
            entry = _take(request, "on-conflict")
        except LockBusy as exc:
            logger.debug("%s; the call takes it", exc)
            locks.marked[name] = request
            continue
        _hold(txn, name, entry)
        taken = True
    if taken:
        _refresh_view(txn)


def _lock_at_commit(txn: Transaction, name: str, request: _Request) -> None:
    """Policy on-conflict, first attempt: the function runs now; the lock is taken at commit."""
    pending = _locks_of(txn).pending
    if name in pending:
        return
    if not pending:
        txn.addBeforeCommitHook(_take_pending, (txn,))
        txn.addAfterAbortHook(_after_abort_pending, (txn,))
    pending[name] = request
    _register_keeper()


def _take_pending(txn: Transaction) -> None:
    """Before-commit hook: pass the commit gate of every lock used optimistically, or take the lock.

    Every commit that touches a key's objects thus either passes the key's
    gate while nobody holds its lock, or happens under the lock; a holder
    waits for the passes before it, so a retry holding the lock from its
    begin never sees a commit come between.  Stores without a gate, and
    keys whose lock is held, take the lock (in name order).  Runs after
    hooks added by earlier hooks too (CMFCore's indexing queue).
    """
    locks = _locks_of(txn)
    for name in sorted(locks.pending):
        if name in locks.held or name in locks.passes or _pass_gate(txn, name, locks):
            continue
        entry = _take(locks.pending[name], "on-conflict")
        _check_exclusive_commits(entry, txn, name)
        _hold(txn, name, entry)


def _pass_gate(txn: Transaction, name: str, locks: _TxnLocks) -> bool:
    """Let ``txn`` commit through lock ``name``'s commit gate; False if it must take the lock.

    It must when the store has no gate or cannot be reached, when the lock
    is held, and when a policy-always holder committed after this
    transaction's view (the locked way then reserves the lock for the retry).
    """
    gate = get_backend().commit_gate
    if gate is None:
        return False
    try:
        entered = gate.enter(name)
    except BackendUnavailable as exc:
        logger.debug("commit gate of %s unavailable (%s): taking the lock", name, exc)
        return False
    if entered is None:
        return False
    try:
        if _commits_since_views(_connections(txn), notes.decode_note(entered.note), exclusive=True):
            entered.leave()
            _learn(locks.pending[name], name, met=True)  # an exclusive writer's commit: it will be retried
            return False
        txn.addAfterCommitHook(_leave_gate, (entered, txn, name))
        txn.addAfterAbortHook(_leave_gate, (False, entered, txn, name))
        locks.passes[name] = entered
    except BaseException:
        entered.leave()
        raise
    return True


def _leave_gate(status: bool, entered: CommitPass, txn: Transaction, name: str) -> None:
    """After-commit and after-abort hook of a pass: record a commit in the note, count a ConflictError.

    A failed commit is counted here, before the abort that follows it, so that
    ``retry_will_lock`` tells the publisher at once (the count is deduped).
    """
    try:
        entry = compact = None
        if status:
            _learn(_locks_of(txn).pending[name], name, met=False)
            tids = _committed_tids(txn, "on-conflict")
            if tids:
                tids = notes.with_since(notes.decode_note(entered.note), tids)
            entry = notes.encode_entries(tids) if tids else None
            if entry and entered.note and entered.note.count(b" ") >= COMPACT_AT:
                def compact(note: bytes | None) -> bytes:
                    return notes.encode_note(notes.merge_note(notes.decode_note(note), tids))
        elif _conflicted():
            _mark(name, _locks_of(txn).pending[name], txn)
        entered.leave(entry, compact)
    except Exception:
        logger.exception("could not leave the commit gate of lock %s", name)
    finally:
        entered.leave()


def _check_exclusive_commits(entry: _Entry, txn: Transaction, name: str) -> None:
    """LockBusy (lock reserved) if a policy-always holder committed after this transaction's view.

    Optimistic commits rely on ZODB's conflict resolution, which merges
    concurrent writes to the same BTrees.  A writer that holds the lock with
    policy ``always`` (``manage_catalogClear``, ``refreshCatalog``,
    ``addIndex``...) may *replace* those objects: a commit made on a view from
    before it would write into the replaced objects without any conflict, and
    be lost.  Such writers record their commit's tid in the lock's note, so
    the note read under the lock tells; the retry then runs on the new state,
    holding the reserved lock from its begin.
    """
    try:
        stale = _commits_since_views(_connections(txn), entry.note, exclusive=True)
        if not stale:
            return
        _catch_up(stale)
        _reserve(entry, txn, name)
    except BaseException:
        _release(entry)
        raise
    metrics.record_busy(name)
    raise LockBusy(
        message="lock %s: a transaction holding it exclusively committed (tid %s) after this "
        "transaction's view began; retry (lock reserved)" % (shown(entry.request.key),
                                                            max(tid for _, tid in stale).hex()),
        key=entry.request.key, reserved=True,
    )


def _after_abort_pending(txn: Transaction) -> None:
    """Mark every lock used optimistically if the transaction failed with a ConflictError."""
    try:
        if _conflicted():
            for name, request in _locks_of(txn).pending.items():
                _mark(name, request, txn)
    except Exception:
        logger.exception("could not mark the optimistic zlocks for the retry")


def _fresh_after_ping(connections: list[Connection]) -> bool:
    """True if no commit reached a shared storage since the views began (after a round trip)."""
    for conn in connections:
        storage = conn.db().storage
        _ping(storage)
        start = _view_start(conn)
        if start is None or storage.lastTransaction() >= start:
            return False
    return True


def _check_view(entry: _Entry, txn: Transaction, connections: list[Connection], name: str, key: str | bytes | int,
                policy: str, adopted: bool, started: float, used: dict[int, set[bytes] | None], move_view: bool
                ) -> bool:
    """Bring a view that predates the last commit under the lock forward (True), or raise LockBusy.

    False if the view was not stale.
    The view is moved forward in place (unless ``move_view`` is False) when
    the transaction cannot have seen the old state of anything the newer
    commits changed (``viewrefresh``; ``used``: what it used, known before
    the wait, if there was one); otherwise LockBusy keeps the lock reserved
    for the retry, which begins after that commit.
    """
    if policy != "on-conflict":
        _warn_unchecked(connections, name)
        stale = _commits_since_views(connections, entry.note)
        if stale:
            _catch_up(stale)
        last = " (tid %s)" % max(tid for _, tid in stale).hex() if stale else ""
        fresh = not stale
    else:
        fresh = adopted or _fresh_after_ping(connections)
        last = ""
    if fresh:
        return False
    why = viewrefresh.refresh(connections, used) if move_view else "this lock does not move views (move_view=False)"
    if why is None:
        metrics.record_view_move(name)
        logger.debug("zlock %s: the view was moved forward in place past the last commit under the lock%s",
                     name, last)
        return True
    _reserve(entry, txn, name)
    metrics.record_busy(name)
    raise LockBusy(
        message="lock %s is busy: the transaction's view predates the last commit made under it%s and %s; "
        "retry (lock reserved, waited %.3fs%s)"
        % (shown(key), last, why, time.monotonic() - started, ", reservation adopted" if adopted else ""),
        key=key, reserved=True,
    )


def lock_for_transaction(key: str | bytes | int, timeout: float = DEFAULT_TIMEOUT,
                         interval: float = DEFAULT_INTERVAL, wait: float | None = None,
                         policy: str = DEFAULT_POLICY, conflicts: int = DEFAULT_CONFLICTS,
                         move_view: bool = True, transaction_manager: _Manager | None = None) -> bool:
    """Hold lock ``key`` for the current ZODB transaction (``policy`` always) or its commit.

    Returns True when the lock is held for the transaction (taken now, adopted
    from this thread's reservation, taken at begin, or already held by an
    earlier call) and the transaction's view contains the last commit made
    under it -- or, with policy ``on-conflict`` (or ``adaptive`` while the key
    runs optimistically) and no conflict mark, when the lock will be taken
    at commit.  Returns False, taking nothing, when there is no transaction
    with a ZODB connection (or ZODB is not installed).

    ``transaction_manager``: the manager whose current transaction holds the
    lock, for connections opened with a ``TransactionManager`` of their own
    (default ``transaction.manager``, the thread's, which Zope uses).

    ``conflicts`` (policy ``on-conflict`` only): after this many
    ConflictErrors in a row in this thread's transactions that used the
    key, the next transaction takes the lock when it begins.

    A view older than the last commit under the lock is moved forward in
    place if the transaction cannot have seen the old state of anything
    changed since (docs/zlock.rst; never with ``move_view`` False).  Raises
    :class:`LockBusy` (lock kept reserved) when it cannot be, and LockBusy
    (not reserved) when the lock could not be taken within ``min(wait,
    txn_wait())`` seconds.
    """
    options = LockOptions(timeout, interval, wait, policy, conflicts, move_view)
    return hold_for_transaction(key, options, transaction_manager)


def hold_for_transaction(key: str | bytes | int, options: LockOptions,
                         transaction_manager: _Manager | None = None) -> bool:
    """:func:`lock_for_transaction` with its options checked."""
    policy = options.policy
    name = lock_name(key)
    txn = _current_transaction(transaction_manager)
    if txn is None:
        return False
    locks = _locks_of(txn)
    if name in locks.held:
        return True
    connections = _connections(txn)
    if not connections:
        return False
    # from the thread's next transaction on, views are marked where they begin
    _register_keeper(transaction_manager)
    marked = locks.marked.pop(name, None)
    reservation = _state.keeper.reservations.pop(name, None)
    request = _Request(key, options.timeout, options.interval, options.wait, options.conflicts,
                       adaptive=policy == "adaptive")
    if policy == "adaptive" and not adaptive.locks(name):
        policy = "on-conflict"
    if policy == "on-conflict" and marked is None and reservation is None:
        _lock_at_commit(txn, name, request)
        return True
    _take_for_transaction(txn, connections, name, request, policy, reservation, options.move_view)
    return True


def _take_for_transaction(txn: Transaction, connections: list[Connection], name: str, request: _Request, policy: str,
                          reservation: _Reservation | None, move_view: bool) -> None:
    """Take (or adopt) the lock now, check the view, hold it to the end; policy adaptive learns what it met."""
    started = time.monotonic()
    entry = _adopt(reservation) if reservation is not None else None
    adopted = entry is not None
    used: dict[int, set[bytes] | None] = {}
    waited: list[bool] = []

    def before_waiting() -> None:
        # What the transaction used is worked out while the lock is busy, not once it is held.
        waited.append(True)
        used.update(viewrefresh.uses(connections))

    # A retry that adopted its reservation continues the transaction that met the writer (and counted it).
    learn = request.adaptive and policy == "adaptive" and not adopted
    try:
        if entry is None:
            entry = _take(request, policy, before_waiting)
        entry.request.timeout = request.timeout
        try:
            moved = _check_view(entry, txn, connections, name, request.key, policy, adopted, started, used,
                                move_view)
            _hold(txn, name, entry)
        except LockBusy:
            raise
        except BaseException:
            _release(entry)
            raise
    except LockBusy:
        if learn:
            adaptive.record(name, locked=True, met=True)
        if early.current() is not None and any(zodbprivate.touched_oids(conn) for conn in connections):
            early.learn(name, (request, policy, move_view))  # it redoes its changes: lock at begin next time
        raise
    if learn:
        adaptive.record(name, locked=True, met=bool(waited) or moved)
    logger.debug("zlock %s held for the transaction (waited %.3fs)", name, time.monotonic() - started)


def lock_early(label: str | None) -> int:
    """A transaction of kind ``label`` begins: take the locks its kind learned to take now (:mod:`.early`).

    Called right after the transaction began (the Zope publisher part calls
    it for every request, with ``METHOD /path``); None ends the labelling.
    If the transaction has used and changed nothing yet, the locks are taken
    as at begin: the view is then brought forward, as if the transaction
    began now.  (Used means read through the pickle cache's order, as for the
    view move: code that reads ``__dict__`` between the begin and this call
    would not be seen, and Zope's publisher runs none.)  Otherwise each is
    taken as by :func:`lock_for_transaction`.
    Returns how many locks were taken.  Raises :class:`LockBusy` as that does.
    """
    early.begin(label)
    wanted = early.to_take(label) if label is not None else []
    txn = _current_transaction() if wanted else None
    connections = _connections(txn) if txn is not None else []
    if txn is None or not connections:
        return 0
    _register_keeper()
    unused = all(used == set() for used in viewrefresh.uses(connections).values()) and not any(
        zodbprivate.touched_oids(conn) for conn in connections)
    taken = 0
    for name, (request, policy, move_view) in wanted:
        if name in _locks_of(txn).held:
            continue
        reservation = _state.keeper.reservations.pop(name, None)
        if unused:
            entry = _adopt(reservation) if reservation is not None else None
            _hold(txn, name, entry if entry is not None else _take(request, policy))
        else:
            _take_for_transaction(txn, connections, name, request, policy, reservation, move_view)
        taken += 1
    if unused and taken:
        _refresh_view(txn)
    logger.debug("%s: %d zlock(s) taken when the transaction began", label, taken)
    return taken


def run_zlocked(key: bytes, options: LockOptions, fun: Callable[..., R], args: tuple[object, ...],
                kwargs: dict[str, object]) -> R:
    """Hold ``key`` for the transaction, or, outside one, for the call like ``rlock``."""
    if key in rlocks_held() or not hold_for_transaction(key, options, manager_of(args, kwargs)):
        return run_rlocked(key, options, fun, args, kwargs)
    return fun(*args, **kwargs)


def zlock(get_key: GetKey, timeout: float = DEFAULT_TIMEOUT, interval: float = DEFAULT_INTERVAL,
          wait: float | None = None, policy: str = DEFAULT_POLICY, conflicts: int = DEFAULT_CONFLICTS,
          move_view: bool = True, **kw: float) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Serialise a function across ZEO clients until the calling transaction ends.

    ``get_key(fun, *args, **kw)`` names what is protected, as for ``lock``;
    ``timeout`` is the lease (renewed while held), ``interval`` the longest
    pause between polls, ``wait`` the longest wait for the lock (inside a
    transaction at most ``txn_wait()``).  ``policy`` is ``adaptive`` (the
    default: ``always`` while the key's writers meet, optimistic while they
    do not; see :mod:`unimr.memcachedlock.adaptive`), ``always`` (lock the
    call until the transaction ends; for writers that replace objects) or
    ``on-conflict`` (optimistic; lock at commit, and lock the whole retry
    after ``conflicts`` ConflictErrors in a row).
    ``move_view`` False turns a stale view into a retry instead of moving it
    forward in place (see :func:`lock_for_transaction`).  The call may raise
    :class:`LockBusy` (a ConflictError: retry the transaction).
    """
    options = LockOptions.from_keywords(timeout, interval, wait, kw, policy, conflicts, move_view)
    return locking_decorator(get_key, options, run_zlocked)


__all__ = ["zlock", "LockBusy", "lock_for_transaction", "lock_early", "retry_will_lock", "storage_identity", "txn_wait",
           "POLICIES", "DEFAULT_POLICY", "RESERVE_FOR", "DEFAULT_CONFLICTS"]
