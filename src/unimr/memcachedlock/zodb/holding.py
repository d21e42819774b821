"""What a transaction holds: its zlocks, kept until it ends, and the hooks that record its commit and release them.

A lock held for a transaction is released by the transaction's after-commit
and after-abort hooks; a successful commit first records its tid in the
lock's note (:mod:`.notes`): the whole note, as nobody else writes it while
the lock is held.  A failed commit or an abort lets the lock's policy count
a ConflictError (policy on-conflict).
"""

from __future__ import annotations

import dataclasses
import logging

from ..backends.base import CommitPass
from ..errors import BackendUnavailable
from . import notes, views
from .private import Transaction
from .reservations import Reservation
from .taking import Entry, Request

try:
    from ZODB.utils import p64, u64
except ImportError:  # zlock then behaves like rlock
    p64 = u64 = None

logger = logging.getLogger(__name__)

#: Key of this module's data on a transaction (``Transaction.data`` keys by id()).
TXN_DATA_KEY = object()


@dataclasses.dataclass(eq=False)
class TxnLocks:
    """This thread's locks of one transaction, by lock name (kept in ``Transaction.data``)."""

    #: Held until the transaction ends (its after-commit and after-abort hooks release them).
    held: dict[str, Entry] = dataclasses.field(default_factory=dict)
    #: Policy on-conflict: taken at commit by the before-commit hook.
    pending: dict[str, Request] = dataclasses.field(default_factory=dict)
    #: Marked by a ConflictError but busy when the transaction began: the call takes them.
    marked: dict[str, Request] = dataclasses.field(default_factory=dict)
    #: Policy on-conflict: committing through the lock store's commit gate, lock not taken.
    passes: dict[str, CommitPass] = dataclasses.field(default_factory=dict)


def locks_of(txn: Transaction) -> TxnLocks:
    """This thread's locks of ``txn`` (none yet the first time)."""
    try:
        locks = txn.data(TXN_DATA_KEY)
    except KeyError:
        locks = None
    if not isinstance(locks, TxnLocks):  # nothing else is kept under this module's key
        locks = TxnLocks()
        txn.set_data(TXN_DATA_KEY, locks)
    return locks


def hold(txn: Transaction, name: str, entry: Entry) -> None:
    """``entry`` is held for ``txn`` from now until it ends."""
    Reservation.promote(entry)
    txn.addAfterCommitHook(_after_commit, (entry, txn))
    txn.addAfterAbortHook(_after_abort, (entry, txn))
    locks_of(txn).held[name] = entry


#: Non-empty while notes cannot be written: one warning per outage, not per commit.
_note_failures: set[bool] = set()


def committed_tids(txn: Transaction, exclusive: bool) -> dict[str, bytes]:
    """The note entries of the commit ``txn`` just made: every commit, and an ``exclusive`` one apart."""
    tids: dict[str, bytes] = {}
    for conn in views.connections_of(txn, joined_only=True):
        tid = views.committed_tid(conn)
        if tid is not None:
            identity = views.storage_identity(conn)
            tids[identity] = tid
            if exclusive:
                tids[notes.EXCLUSIVE + identity] = tid
    return tids


def _untouched(txn: Transaction) -> dict[str, bytes]:
    """The storages ``txn`` used without changing, each with the tid just above its last one.

    Written by a locked commit as where the note's record of such a storage
    begins: nothing can commit under a held lock, so every later commit
    under it is recorded.
    """
    found: dict[str, bytes] = {}
    for conn in views.connections_of(txn):
        last = conn.db().storage.lastTransaction()
        if views.view_start(conn) is not None:
            found[views.storage_identity(conn)] = p64(u64(last) + 1)
    return found


def _write_note(entry: Entry, txn: Transaction) -> None:
    """Record the commit just made under the lock (the whole note: nobody else writes it now)."""
    tids = committed_tids(txn, entry.policy.exclusive)
    if tids:
        fresh = notes.with_since(entry.note, tids, _untouched(txn))
        value = notes.encode_note(notes.merge_note(entry.note, fresh))
        backend = entry.lock.backend
        # Stored with the release, just before the lock is freed, and only if it is still ours then.
        if not backend.defer_note(entry.lease, value):
            backend.set_note(entry.lock.name, value)
        _note_failures.clear()


def _after_commit(status: bool, entry: Entry, txn: Transaction) -> None:
    """Record the commit's tid with the lock (if it succeeded), then release."""
    try:
        if status and entry.lease.held:
            _write_note(entry, txn)
        elif not status:
            entry.policy.count_conflict(entry, txn)
    except BackendUnavailable as exc:
        # The store's own outage warning was logged once; say once what it costs here.
        log = logger.debug if _note_failures else logger.warning
        _note_failures.add(True)
        log("could not record the commit made under lock %s (%s): the next holder may "
            "run on an older view and meet a ConflictError", entry.lock.name, exc)
    except Exception:
        logger.exception("could not record the commit made under lock %s", entry.lock.name)
    finally:
        Reservation.release(entry)


def _after_abort(entry: Entry, txn: Transaction) -> None:
    try:
        entry.policy.count_conflict(entry, txn)
    except Exception:
        logger.exception("could not mark lock %s for the retry", entry.lock.name)
    finally:
        Reservation.release(entry)


__all__ = ["TxnLocks", "locks_of", "hold", "committed_tids", "TXN_DATA_KEY"]
