"""Moving a transaction's view forward in place, once a zlock is held, when that is safe.

Why: a connection's view of the database is fixed when its transaction
begins.  A transaction that waited for a zlock behind another writer holds
the lock with a view older than that writer's commit; working on it would
conflict at commit, and retrying the whole request (LockBusy) costs the
request's work again.  Moving the view forward instead is the same as having
begun the transaction later, *provided nothing the transaction has used so
far was changed by the commits the move takes in*.  Then every value it read
is still the current one, and ZODB's conflict check at commit stays the
final guard for the rest.

What "used" means, and how it is known.  ZODB keeps no read set.  But the
pickle cache keeps its non-ghost objects in least-recently-used order, and
every use of an object's state (an attribute, a BTree lookup in C, a change)
moves the object to the most-recent end.  An :class:`AccessMarker`, a
stand-in object put in the connection's cache and touched whenever a view
begins (:func:`mark_view_begin`), splits that order in two: every object
used since the view began lies after the marker.  Objects the transaction
changed (also before a savepoint) or passed to ``readCurrent`` count as used
whatever the order says.  The cache's garbage collection ghostifies from the
least-recent end, so it cannot drop a used object without first dropping
the marker; a marker found ghostified or missing (cache minimized or reset
during the transaction, or no view begun since zlock first ran in this
thread) means "unknown", and nothing is moved.

One thing the order cannot show: an object the code used and then turned
back into a ghost itself (``obj._p_deactivate()``) before the lock.  Code
that does that and later writes values derived from the object under a
zlock must not rely on the move; zlock's catalog locks are not affected (see
docs/zlock.rst).

After a move the objects the newer commits changed are ghosts: they load in
their new state when used, and their new states are requested from ZEO in
one batch (``Connection.prefetch``) because the locked work is about to use
most of them.
"""

from __future__ import annotations

import logging
from typing import Any

from . import zodbprivate

try:
    from persistent import Persistent
except ImportError:  # no ZODB: zlock behaves like rlock and never moves a view
    Persistent = object

logger = logging.getLogger(__name__)

#: The marker's oid in every cache.  ZODB allocates oids upwards from 0: this one is never a real object's.
MARKER_OID = b"\xff" * 8


class _MarkerJar:
    """The jar of access markers: gives a ghostified marker its (empty) state without a storage."""

    def setstate(self, obj: Any) -> None:
        obj.__setstate__({})

    def register(self, obj: Any) -> None:
        """A marker is never stored."""


_MARKER_JAR = _MarkerJar()


class AccessMarker(Persistent):
    """Stands in a connection's pickle cache where the current view began (see the module docstring)."""

    #: Read to move the marker to the most-recent end of the cache's order.
    touch = None


def mark_view_begin(conn: Any) -> None:
    """Remember that ``conn``'s view begins now: nothing has been used on it yet.

    Called by zlock's synchronizer when a transaction begins or ends (ZODB
    starts a connection's next view then) -- before the application can use
    anything on the new view.  Never raises.
    """
    cache = zodbprivate.pickle_cache(conn)
    if cache is None or Persistent is object:
        return
    try:
        marker = cache.get(MARKER_OID)
        if isinstance(marker, AccessMarker):
            marker.touch  # noqa: B018 (the read moves it to the most-recent end; a ghost is restored)
            return
        marker = AccessMarker()
        marker._p_jar = _MARKER_JAR
        marker._p_oid = MARKER_OID
        cache[MARKER_OID] = marker
    except Exception:
        logger.debug("could not mark the view of %r", conn, exc_info=True)


def _live_marker(cache: Any) -> AccessMarker | None:
    """The cache's marker if it is still where the view began (not ghostified since), else None."""
    marker = cache.get(MARKER_OID) if cache is not None else None
    if isinstance(marker, AccessMarker) and marker._p_changed is not None:
        return marker
    return None


def used_since_view_began(conn: Any) -> set[bytes] | None:
    """Oids of the objects used since ``conn``'s view began, or None if that is unknown.

    One pass over the cache's order: its cost grows with the objects in the
    cache (about 2 ms for 50,000), so zlock asks before it waits for a busy
    lock, not while it holds it.
    """
    cache = zodbprivate.pickle_cache(conn)
    marker = _live_marker(cache)
    if marker is None:
        return None
    items = cache.lru_items()
    for index in range(len(items) - 1, -1, -1):
        if items[index][1] is marker:
            return {oid for oid, _ in items[index + 1:]} | zodbprivate.touched_oids(conn)
    return None


def uses(connections: list) -> dict[int, set[bytes] | None]:
    """What each connection's transaction has used so far, by ``id(conn)``: for :func:`refresh` later.

    Valid as long as the transaction uses nothing more (while it waits for a lock).
    """
    return {id(conn): used_since_view_began(conn) for conn in connections}


class _Reads:
    """What one connection's transaction has used, computed once and only if a question needs it."""

    def __init__(self, conn: Any, used: set[bytes] | None = None) -> None:
        self.conn = conn
        self.cache = zodbprivate.pickle_cache(conn)
        self.touched = zodbprivate.touched_oids(conn)
        self._used = used

    def in_memory(self, oid: bytes) -> bool:
        """True if the object is in the cache and not a ghost."""
        obj = self.cache.get(oid)
        return obj is not None and obj._p_changed is not None

    def conflicting(self, oids: set[bytes]) -> bytes | None:
        """One of ``oids`` this transaction used (b"" if what it used is unknown), else None."""
        if not oids:
            return None
        in_memory = []
        for oid in oids:
            if oid in self.touched:
                return oid
            if self.in_memory(oid):
                in_memory.append(oid)
        if _live_marker(self.cache) is None:
            return b""
        if in_memory:
            if self._used is None:
                self._used = used_since_view_began(self.conn)
                if self._used is None:
                    return b""
            for oid in in_memory:
                if oid in self._used:
                    return oid
        return None


def refresh(connections: list, used: dict[int, set[bytes] | None] | None = None) -> str | None:
    """Move the views of ``connections`` forward if nothing used so far changed; else why not.

    ``used`` is what :func:`uses` returned before a wait, if it was called.
    Returns None when every view now contains every commit its client has
    received (objects those commits changed are ghosts, their new states
    prefetched), or a reason (a sentence fragment) when a move would not be
    safe or is not possible.  On a reason some views may have moved already:
    the caller then retries the whole transaction.
    """
    plans = []
    for conn in connections:
        storage = zodbprivate.normal_storage(conn)
        pending = zodbprivate.pending_invalidations(storage)
        if pending is None:
            return "its view cannot be moved (%s)" % type(storage).__name__
        reads = _Reads(conn, (used or {}).get(id(conn)))
        oid = reads.conflicting(pending)
        if oid is not None:
            return _why(oid)
        plans.append((conn, storage, reads, pending))
    for conn, storage, reads, checked in plans:
        why = _move(conn, storage, reads, checked)
        if why is not None:
            return why
    return None


def _move(conn: Any, storage: Any, reads: _Reads, checked: set[bytes]) -> str | None:
    """Ghostify the changed objects (none of them used), then move the view; None if moved."""
    wanted = [oid for oid in checked if reads.in_memory(oid)]
    reads.cache.invalidate(list(checked))  # harmless at the old view too: none of them was used
    last_tid = conn.db().storage.lastTransaction()
    refused: list = []

    def accept(oids: set[bytes]) -> bool:
        oid = reads.conflicting(oids - checked)
        if oid is not None:
            refused.append(oid)
        return oid is None

    def invalidate(oids: set[bytes]) -> None:
        arrived = oids - checked
        wanted.extend(oid for oid in arrived if reads.in_memory(oid))
        reads.cache.invalidate(list(arrived))

    oids = zodbprivate.advance_view(storage, last_tid, accept, invalidate)
    if oids is None:
        return _why(refused[0]) if refused else "its view cannot be moved now"
    if wanted:
        try:
            conn.prefetch(wanted)
        except Exception as exc:  # only a speed-up: the loads that follow fetch what is missing
            logger.debug("prefetch after moving the view of %r failed: %s", conn, exc)
    logger.debug("view of %r moved forward in place: %d objects changed, %d prefetched",
                 conn, len(oids), len(wanted))
    return None


def _why(oid: bytes) -> str:
    if not oid:
        return "what it used so far is unknown (cache minimized or no view begun since zlock started)"
    return "a newer commit changed an object it used before the lock (oid %s)" % oid.hex()


__all__ = ["AccessMarker", "MARKER_OID", "mark_view_begin", "used_since_view_began", "uses", "refresh"]
