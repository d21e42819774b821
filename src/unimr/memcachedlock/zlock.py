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
   the view is older, the function is not run: the lock is kept *reserved* for
   this thread, the ZEO client is brought up to date (one server round trip),
   and :class:`LockBusy` -- a ``ConflictError`` -- asks
   ``transaction.manager.attempts()``, ``run()`` or the Zope publisher to retry.
   The retry adopts the reservation without waiting and sees the commit.

A reservation that no retry claims is freed at the end of the thread's next
transaction, or after :data:`RESERVE_FOR` seconds (plus at most one renewal
period) at the latest.

Outside a transaction that has a ZODB connection (scripts, threads without a
database), or without ZODB and ``transaction`` installed, zlock holds the lock
only for the call, re-entrantly, like ``rlock``.

The view is read from the connection's MVCC adapter (``_start``, the tid the
snapshot reads before) and the connections from the transaction's
synchronizers and resources: ZODB 5/6 and transaction 3+ offer no public API
for either.  Storages without that adapter (RelStorage) are not checked: zlock
then only serialises.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Callable, TypeVar
from urllib.parse import quote, unquote

from . import metrics
from .decorators import acquire_or_raise, check_options, locking_decorator, rlocks_held, run_rlocked
from .errors import BackendUnavailable, MemcachedLockError, NotHeld
from .keys import lock_name
from .lease import Lease
from .locks import DEFAULT_INTERVAL, DEFAULT_TIMEOUT, Lock

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

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: Lease (seconds) of a fresh acquisition until the view is found fresh, and of a reservation.
RESERVATION_TTL = 5.0
#: Seconds an unclaimed reservation is kept before the renewer releases it.
RESERVE_FOR = 3.0
#: A reservation this close to its end is not adopted (the renewer may be releasing it).
ADOPT_MARGIN = 0.5
#: Longest wait for this ZEO client to receive the last commit made under the lock.
CATCH_UP_TIMEOUT = 2.0

NOTE_MAGIC = b"zlock1"

if ConflictError is not None:

    class LockBusy(MemcachedLockError, ConflictError):
        """The lock was busy or this transaction's view is older than its last commit: retry.

        A ``ConflictError``, so ``transaction.manager.attempts()``, ``run()``
        and the Zope publisher retry the transaction, and Zope code that
        re-raises ConflictErrors and swallows other exceptions passes it on.
        The lock stays reserved for this thread's retry.
        """

        def __init__(self, message: str | None = None, key: object = None, **kw: Any) -> None:
            ConflictError.__init__(self, message=message, **kw)
            self.key = key

elif TransientError is not None:

    class LockBusy(MemcachedLockError, TransientError):
        """The lock was busy: retry the transaction (ZODB is not installed)."""

        def __init__(self, message: str | None = None, key: object = None, **kw: Any) -> None:
            super().__init__(message)
            self.message = message
            self.key = key

else:

    class LockBusy(MemcachedLockError):
        """The lock was busy: retry (neither ZODB nor transaction is installed)."""

        def __init__(self, message: str | None = None, key: object = None, **kw: Any) -> None:
            super().__init__(message)
            self.message = message
            self.key = key


@dataclasses.dataclass(eq=False)
class _Entry:
    """One lock this thread holds (or has reserved) for a transaction."""

    key: object
    lock: Lock
    lease: Lease
    note: dict[str, bytes]
    timeout: float


@dataclasses.dataclass(eq=False)
class _Reservation:
    entry: _Entry
    origin: object


class _ReservationKeeper:
    """A transaction synchronizer that frees reservations no retry claimed.

    Registered once per thread with ``transaction.manager``; after any
    transaction other than the one that made a reservation ends, that
    reservation is released.  Never raises.
    """

    def __init__(self) -> None:
        self.reservations: dict[str, _Reservation] = {}

    def newTransaction(self, txn: object) -> None:  # noqa: N802 (ISynchronizer)
        """Nothing to do when a transaction begins."""

    def beforeCompletion(self, txn: object) -> None:  # noqa: N802 (ISynchronizer)
        """Nothing to do before a transaction ends."""

    def afterCompletion(self, txn: object) -> None:  # noqa: N802 (ISynchronizer)
        """Release the reservations made by earlier transactions of this thread."""
        try:
            for name, reservation in list(self.reservations.items()):
                if reservation.origin is not txn:
                    del self.reservations[name]
                    logger.debug("reservation of lock %s not claimed by the next transaction: released", name)
                    _release(reservation.entry)
        except Exception:
            logger.exception("releasing unclaimed zlock reservations failed")


class _ThreadState(threading.local):
    def __init__(self) -> None:
        self.keeper = _ReservationKeeper()
        self.registered = False


_state = _ThreadState()

#: Key of this module's data on a transaction (``Transaction.data`` keys by id()).
_TXN_DATA_KEY = object()


def _current_transaction() -> object | None:
    """The current transaction of ``transaction.manager``, or None (not installed, explicit mode)."""
    if _transaction is None or _Connection is None:
        return None
    try:
        return _transaction.get()
    except NoTransaction:
        return None


def _connections(txn: object) -> list:
    """The ZODB connections of ``txn``: joined ones and those synchronised with its manager."""
    found: list = []

    def collect(obj: object) -> None:
        if isinstance(obj, _Connection) and obj not in found and obj._normal_storage is not None:
            found.append(obj)

    for resource in list(getattr(txn, "_resources", ())):
        collect(resource)
    synchronizers = getattr(txn, "_synchronizers", None)
    if synchronizers is not None:
        synchronizers.map(collect)
    return found


def _db_name(conn) -> str:
    return conn.db().database_name


def _view_start(conn) -> bytes | None:
    """The tid this connection's snapshot reads before (its view), or None if unknown."""
    start = getattr(conn._normal_storage, "_start", None)
    return start if isinstance(start, bytes) and len(start) == 8 else None


def _committed_tid(conn) -> bytes | None:
    """A tid at or after this connection's last commit that this client has received."""
    storage = conn._normal_storage
    candidates = []
    ltid = getattr(storage, "_ltid", b"")
    if isinstance(ltid, bytes) and len(ltid) == 8:
        candidates.append(ltid)
    start = _view_start(conn)
    if start is not None and u64(start) > 0:
        candidates.append(p64(u64(start) - 1))
    return max(candidates) if candidates else None


def encode_note(tids: dict[str, bytes]) -> bytes:
    """The note stored with a lock: the last tid committed under it, per database."""
    parts = [NOTE_MAGIC]
    for name in sorted(tids):
        parts.append(quote(name, safe="").encode("ascii") + b"=" + tids[name].hex().encode("ascii"))
    return b" ".join(parts)


def decode_note(value: bytes | None) -> dict[str, bytes]:
    """Parse a note; an absent or foreign one means no commit is known."""
    if not value:
        return {}
    parts = value.split(b" ")
    if parts[0] != NOTE_MAGIC:
        logger.debug("ignoring a lock note not written by zlock: %r", value[:60])
        return {}
    tids: dict[str, bytes] = {}
    for part in parts[1:]:
        name, sep, tid_hex = part.partition(b"=")
        try:
            tid = bytes.fromhex(tid_hex.decode("ascii"))
            if not sep or len(tid) != 8:
                raise ValueError(part)
            tids[unquote(name.decode("ascii"))] = tid
        except (ValueError, UnicodeDecodeError):
            logger.debug("ignoring a malformed part of a lock note: %r", part[:60])
    return tids


def _read_note(lock: Lock) -> dict[str, bytes]:
    try:
        return decode_note(lock.backend.get_note(lock.name))
    except BackendUnavailable as exc:
        logger.debug("cannot read the note of lock %s (%s): view not checked", lock.name, exc)
        return {}


def _stale(connections: list, note: dict[str, bytes]) -> list[tuple[Any, bytes]]:
    """The connections whose view lacks the last commit recorded in ``note``, with that tid."""
    stale = []
    for conn in connections:
        tid = note.get(_db_name(conn))
        start = _view_start(conn)
        if tid is not None and start is not None and start <= tid:
            stale.append((conn, tid))
    return stale


def _catch_up(stale: list[tuple[Any, bytes]]) -> None:
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
        ping = getattr(storage, "ping", None)
        if callable(ping):
            try:
                ping()
            except Exception as exc:
                logger.debug("ping of %s failed: %s", storage, exc)
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


def _release(entry: _Entry) -> None:
    """Give the lock back.  Idempotent; never raises (transaction hooks call it)."""
    try:
        entry.lease.renew_until = None
        entry.lock.release()
    except NotHeld:
        pass
    except Exception:
        logger.exception("releasing zlock %s failed", entry.lock.name)


#: Non-empty while notes cannot be written: one warning per outage, not per commit.
_note_failures: set = set()


def _after_commit(status: bool, entry: _Entry, txn: object) -> None:
    """Record the commit's tid with the lock (if it succeeded), then release."""
    try:
        if status and entry.lease.held:
            tids = dict(entry.note)
            wrote = False
            for conn in _connections(txn):
                if conn in getattr(txn, "_resources", ()):
                    tid = _committed_tid(conn)
                    if tid is not None:
                        tids[_db_name(conn)] = tid
                        wrote = True
            if wrote:
                entry.lock.backend.set_note(entry.lock.name, encode_note(tids))
                _note_failures.clear()
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



def _after_abort(entry: _Entry) -> None:
    _release(entry)


def _held_in(txn: object) -> dict[str, _Entry]:
    try:
        return txn.data(_TXN_DATA_KEY)
    except KeyError:
        held: dict[str, _Entry] = {}
        txn.set_data(_TXN_DATA_KEY, held)
        return held


def _adopt(reservation: _Reservation) -> _Entry | None:
    """The reserved entry if it is still ours and not about to be released, else None."""
    entry = reservation.entry
    until = entry.lease.renew_until
    if until is None or not entry.lease.held or time.monotonic() >= until - ADOPT_MARGIN:
        _release(entry)
        return None
    entry.lease.renew_until = None
    return entry


def _take(key: object, timeout: float, interval: float, wait: float) -> _Entry:
    """Acquire (waiting up to ``wait``) with a short lease until the view is known fresh."""
    the_lock = Lock(key, min(timeout, RESERVATION_TTL), interval)
    acquire_or_raise(the_lock, wait)
    try:
        note = _read_note(the_lock)
    except BaseException:
        the_lock.release()
        raise
    return _Entry(key, the_lock, the_lock.lease, note, timeout)


def _promote(entry: _Entry) -> None:
    """Give the lease its full lifetime now that it will be used."""
    if entry.timeout > entry.lease.ttl:
        try:
            entry.lease.renew(entry.timeout)
        except BackendUnavailable as exc:
            logger.debug("could not extend lock %s now (%s): the renewer retries", entry.lock.name, exc)


def _reserve(entry: _Entry, txn: object, name: str) -> None:
    """Keep ``entry``'s lock for this thread's next transaction, at most RESERVE_FOR seconds."""
    entry.lease.renew_until = time.monotonic() + RESERVE_FOR
    keeper = _state.keeper
    keeper.reservations[name] = _Reservation(entry, txn)
    if not _state.registered:
        _transaction.manager.registerSynch(keeper)
        _state.registered = True


def lock_for_transaction(key: str | bytes | int, timeout: float = DEFAULT_TIMEOUT,
                         interval: float = DEFAULT_INTERVAL, wait: float | None = None) -> bool:
    """Hold lock ``key`` until the current ZODB transaction ends.

    Returns True when the lock is held for the transaction (taken now, adopted
    from this thread's reservation, or already held by an earlier call) and
    the transaction's view contains the last commit made under it.  Returns
    False, taking nothing, when there is no transaction with a ZODB
    connection (or ZODB is not installed): the caller decides what to do.

    Raises :class:`LockBusy` (lock kept reserved) when the view is older than
    the last commit under the lock, and ``LockTimeout`` when the lock could not
    be taken within ``wait`` seconds (default: ``timeout`` plus two).
    """
    timeout, interval, wait = check_options(timeout, interval, wait, {})
    name = lock_name(key)
    txn = _current_transaction()
    if txn is None:
        return False
    held = _held_in(txn)
    if name in held:
        return True
    connections = _connections(txn)
    if not connections:
        return False
    started = time.monotonic()
    reservation = _state.keeper.reservations.pop(name, None)
    entry = _adopt(reservation) if reservation is not None else None
    adopted = entry is not None
    if entry is None:
        entry = _take(key, timeout, interval, wait)
    entry.timeout = timeout
    try:
        stale = _stale(connections, entry.note)
        if stale:
            _catch_up(stale)
            _reserve(entry, txn, name)
            metrics.record_busy(name)
            raise LockBusy(
                message="lock %r is busy: the transaction's view predates the last commit made under it "
                "(tid %s); retry (lock reserved, waited %.3fs%s)"
                % (key, max(tid for _, tid in stale).hex(), time.monotonic() - started,
                   ", reservation adopted" if adopted else ""),
                key=key,
            )
        _promote(entry)
        txn.addAfterCommitHook(_after_commit, (entry, txn))
        txn.addAfterAbortHook(_after_abort, (entry,))
        held[name] = entry
    except LockBusy:
        raise
    except BaseException:
        _release(entry)
        raise
    logger.debug("zlock %s held for the transaction (waited %.3fs)", name, time.monotonic() - started)
    return True


def _run_zlocked(key: bytes, timeout: float, interval: float, wait: float, fun: Callable, args: tuple, kwargs: dict):
    """Hold ``key`` for the transaction, or, outside one, for the call like ``rlock``."""
    if key in rlocks_held() or not lock_for_transaction(key, timeout, interval, wait):
        return run_rlocked(key, timeout, interval, wait, fun, args, kwargs)
    return fun(*args, **kwargs)


def zlock(get_key: Callable, timeout: float = DEFAULT_TIMEOUT, interval: float = DEFAULT_INTERVAL,
          wait: float | None = None, **kw) -> Callable[[F], F]:
    """Serialise a function across ZEO clients until the calling transaction ends.

    ``get_key(fun, *args, **kw)`` names what is protected, as for ``lock``;
    ``timeout`` is the lease (renewed while held), ``interval`` the longest
    pause between polls, ``wait`` the longest wait for the lock.  The call may
    raise :class:`LockBusy` (a ConflictError: retry the transaction) instead
    of running the function on a stale view.
    """
    return locking_decorator(get_key, timeout, interval, wait, kw, _run_zlocked)


__all__ = ["zlock", "LockBusy", "lock_for_transaction", "RESERVATION_TTL", "RESERVE_FOR"]
