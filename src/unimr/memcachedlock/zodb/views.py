"""A transaction's views: its connections, their storages' shared identity, and whether a view is fresh.

A connection's view of the database is fixed when its transaction begins;
zlock compares it with the commits made under a lock (recorded in the lock's
note, :mod:`.notes`, by storage identity) and, where the note cannot tell,
with the storage itself after one round trip to its server.  A ZEO client
receives commits asynchronously, so a ``ping`` (one server round trip) is
what makes "every commit made before now has arrived" true.

The view is read from the connection's MVCC adapter (``_start``) and the
connections from the transaction's synchronizers and resources, through
:mod:`.private`: ZODB 5/6 and transaction 3+ offer no public API for either.
"""

from __future__ import annotations

import logging
import time

from . import notes, private, viewmove
from .private import Connection, Storage, Transaction

try:
    from ZODB.Connection import Connection as _Connection
    from ZODB.utils import p64, u64
except ImportError:  # zlock then behaves like rlock
    _Connection = p64 = u64 = None

try:
    from ZEO.ClientStorage import ClientStorage as _ClientStorage
except ImportError:
    _ClientStorage = None

logger = logging.getLogger(__name__)

#: Longest wait for this ZEO client to receive the last commit made under the lock.
CATCH_UP_TIMEOUT = 2.0


def mark_views(txn: Transaction) -> None:
    """The views of ``txn``'s connections begin now: nothing has been used on them (see viewmove)."""
    for conn in connections_of(txn):
        viewmove.mark_view_begin(conn)


def connections_of(txn: Transaction, joined_only: bool = False) -> list[Connection]:
    """The ZODB connections of ``txn``: joined ones, then (unless ``joined_only``) those synchronised with it."""
    found: list[Connection] = []

    def collect(obj: object) -> None:
        if isinstance(obj, _Connection) and obj not in found and private.normal_storage(obj) is not None:
            found.append(obj)

    for resource in private.resources(txn):
        collect(resource)
    if not joined_only:
        private.each_synchronizer(txn, collect)
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


def view_start(conn: Connection) -> bytes | None:
    """The tid this connection's snapshot reads before (its view), or None if unknown."""
    return private.view_start(private.normal_storage(conn))


def committed_tid(conn: Connection) -> bytes | None:
    """A tid at or after this connection's last commit that this client has received."""
    candidates: list[bytes] = []
    ltid = private.last_committed(private.normal_storage(conn))
    if ltid is not None:
        candidates.append(ltid)
    start = view_start(conn)
    if start is not None and u64(start) > 0:
        candidates.append(p64(u64(start) - 1))
    return max(candidates) if candidates else None


_unchecked_warned: set[str] = set()


def warn_unchecked(connections: list[Connection], name: str) -> None:
    """One warning per storage class whose view zlock cannot check (RelStorage)."""
    for conn in connections:
        kind = type(private.normal_storage(conn)).__name__
        if view_start(conn) is None and kind not in _unchecked_warned:
            _unchecked_warned.add(kind)
            logger.warning(
                "zlock %s (policy always) cannot check the view of %s storages: a transaction that "
                "takes the lock after it began may still meet a ConflictError at commit (ZODB detects "
                "it, nothing is lost); policy on-conflict does not need the check", name, kind)


def commits_since_views(connections: list[Connection], note: dict[str, bytes], exclusive: bool = False
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
        start = view_start(conn)
        if start is None:
            continue
        verdict, tid = judge(note, storage_identity(conn), start)
        if verdict == notes.UNKNOWN:
            storage = conn.db().storage
            ping(storage)
            last = storage.lastTransaction()
            verdict, tid = (notes.STALE, last) if last >= start else (notes.FRESH, None)
            logger.debug("lock note says nothing of %s since tid %s: the storage's last tid %s is %s",
                         storage_identity(conn), start.hex(), last.hex(), verdict)
        if verdict == notes.STALE and tid is not None:  # a stale verdict always names its tid
            newer.append((conn, tid))
    return newer


def ping(storage: Storage) -> bool:
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


def catch_up(stale: list[tuple[Connection, bytes]]) -> None:
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
        ping(storage)
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


def refresh_view(txn: Transaction) -> None:
    """Bring the views of ``txn``'s connections forward: at begin, before anything is read.

    A round trip to each ZEO server first (so every commit made before it, in
    particular the previous holder's, has arrived), then the connection's own
    begin-of-transaction poll (``newTransaction``: invalidate what changed,
    advance the view).  After a ping the poll does not sync: a ZEO client's
    sync is that same ping (``server_sync=True``) or nothing.  A storage
    without a ping syncs there (RelStorage polls its database).
    """
    for conn in connections_of(txn):
        pinged = ping(conn.db().storage)
        conn.newTransaction(txn, not pinged)


def fresh_after_ping(connections: list[Connection]) -> bool:
    """True if no commit reached a shared storage since the views began (after a round trip)."""
    for conn in connections:
        storage = conn.db().storage
        ping(storage)
        start = view_start(conn)
        if start is None or storage.lastTransaction() >= start:
            return False
    return True


__all__ = ["mark_views", "connections_of", "storage_identity", "view_start", "committed_tid", "warn_unchecked",
           "commits_since_views", "ping", "catch_up", "refresh_view", "fresh_after_ping", "CATCH_UP_TIMEOUT"]
