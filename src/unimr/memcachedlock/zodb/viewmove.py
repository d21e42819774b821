"""Moving a transaction's view forward in place, once a zlock is held, when that is safe.

Why: a connection's view of the database is fixed when its transaction
begins.  A transaction that waited for a zlock behind another writer holds
the lock with a view older than that writer's commit; working on it would
conflict at commit, and retrying the whole request (LockBusy) costs the
request's work again.  Moving the view forward instead is the same as having
begun the transaction later, *provided the transaction has not seen the old
state of anything the newer commits changed*.  The move must never commit
what plain ZODB would refuse: a value derived from an old state, written
where plain ZODB's conflict check would have caught it.

ZODB keeps no read set, and code can read an object's state in ways nothing
records: ``obj.__dict__``, ``vars(obj)``, ``object.__getattribute__``, a
reference to a ``PersistentMapping``'s ``data`` kept from earlier.  So the
move does not ask "what did the transaction read?" but "could it have seen
this object's old state?", and it moves only when the answer is no for
every object the newer commits changed.  For each such object, by where it
is in the connection's pickle cache:

* **Not in the cache**: its old state is not in memory.  Passed.  (An object
  loaded in this view leaves the cache only if it was ghostified and nothing
  refers to it any more: see docs/zlock.rst for what that leaves unseen.)
* **Changed, saved in a savepoint, rolled back or passed to readCurrent by
  this transaction** (``private.touched_oids``): seen.
* **In memory, of a type whose state cannot be read unseen**
  (:func:`sees_every_read`: the buckets, trees and sets of BTrees, read only
  by their own code, which moves them in the cache's order, and
  ``BTrees.Length.Length``, read through ``value``): seen if it was used
  since the view began.  The pickle cache keeps its non-ghost objects in
  least-recently-used order; an :class:`AccessMarker`, touched whenever a
  view begins (:func:`mark_view_begin`), splits that order in two: every
  object used since lies after it.  The cache's garbage collection
  ghostifies from the least-recent end, so it cannot drop a used object
  without first dropping the marker; a marker found ghostified or missing
  (cache minimized or reset, or no view begun since zlock first ran in this
  thread) means "unknown", and nothing is moved.
* **In memory, of any other type**: seen, because its state may have been
  read without the cache seeing it.  These are the objects plain ZODB would
  guard with its own conflict check at commit, so the transaction retries.
* **A ghost**, of any other type, **that held the state of this view**:
  that state was in memory during the view and may have been read before
  the object became a ghost (``_p_deactivate()``, a cache GC after an
  unseen read): seen.  A ghost whose last state is older than the view's
  (it was invalidated when the view began) or that was never loaded is
  passed; asking costs one load at the old view.  A BTree or Length ghost
  is passed: it is used only through reads the cache sees, and a savepoint's
  rollback, which ghostifies what the transaction changed, is recorded
  (``private.watch_rollbacks``).

What remains unseen is written down in docs/zlock.rst: values carried over
from an earlier transaction (a local, a module global, a ``_v_`` attribute)
of objects the move passes, and reads of a Length or of a pure-Python
BTree's private state around their methods.  ``move_view=False`` on a lock
turns the move off.

After a move the objects the newer commits changed are ghosts: they load in
their new state when used, and those that were in memory are requested from
ZEO in one batch (``Connection.prefetch``) because the locked work is about
to use most of them.
"""

from __future__ import annotations

import logging
from typing import Any

from . import private
from .private import Connection

try:
    from persistent import Persistent
except ImportError:  # no ZODB: zlock behaves like rlock and never moves a view
    Persistent = object

logger = logging.getLogger(__name__)

#: The marker's oid in every cache.  ZODB allocates oids upwards from 0: this one is never a real object's.
MARKER_OID = b"\xff" * 8

#: ``_p_serial`` of an object never loaded.
_NEVER_LOADED = b"\0" * 8


def _classes_whose_reads_are_seen() -> frozenset[type]:
    """BTrees' bucket, tree and set classes (C and Python, every family) and Length; empty without BTrees."""
    try:
        import BTrees
        from BTrees.Length import Length
    except ImportError:
        return frozenset()
    found: set[type] = {Length}
    for family in (BTrees.family32, BTrees.family64):
        for module in (getattr(family, name) for name in dir(family) if name.isupper()):
            for kind in ("Bucket", "Set", "BTree", "TreeSet"):
                for name in (kind, kind + "Py"):
                    cls = getattr(module, name, None)
                    if isinstance(cls, type):
                        found.add(cls)
    return frozenset(found)


_SEEN_CLASSES = _classes_whose_reads_are_seen()


def sees_every_read(obj: Any) -> bool:
    """True if ``obj``'s state cannot be read without the pickle cache seeing it.

    BTrees' buckets, trees and sets keep their state where only their own
    code reads it, and that code moves the object to the most-recent end of
    the cache's order (``PER_USE`` in C, ``_p_accessed`` in Python).  A
    ``Length`` holds one number read through ``value`` or a call.  Only
    these exact classes: a subclass may keep more state in its ``__dict__``,
    and any other object's state can be read through ``__dict__`` and the
    like, which the order does not record.
    """
    return type(obj) in _SEEN_CLASSES


class _MarkerJar:
    """The jar of one cache's access marker: gives a ghostified marker its (empty) state without a storage.

    ``_cache`` is how persistent's Python implementation finds the cache whose
    order a use moves (the C one keeps that pointer in the object itself).
    """

    def __init__(self, cache: Any) -> None:
        self._cache = cache

    def setstate(self, obj: Any) -> None:
        obj.__setstate__({})

    def register(self, obj: Any) -> None:
        """A marker is never stored."""


class AccessMarker(Persistent):  # type: ignore[misc]  # persistent ships no types: its base class is Any
    """Stands in a connection's pickle cache where the current view began (see the module docstring)."""

    #: Read to move the marker to the most-recent end of the cache's order.
    touch = None


def mark_view_begin(conn: Connection) -> None:
    """Remember that ``conn``'s view begins now: nothing has been used on it yet.

    Called by zlock's synchronizer when a transaction begins or ends (ZODB
    starts a connection's next view then) -- before the application can use
    anything on the new view.  Never raises.
    """
    cache = private.pickle_cache(conn)
    if cache is None or Persistent is object:
        return
    try:
        private.watch_rollbacks(conn)
        private.forget_rollbacks(conn)
        marker = cache.get(MARKER_OID)
        if isinstance(marker, AccessMarker):
            marker.touch  # noqa: B018 (the read moves it to the most-recent end; a ghost is restored)
            return
        marker = AccessMarker()
        marker._p_jar = _MarkerJar(cache)
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


def used_since_view_began(conn: Connection) -> set[bytes] | None:
    """Oids of the objects used since ``conn``'s view began, or None if that is unknown.

    One pass over the cache's order: its cost grows with the objects in the
    cache (about 2 ms for 50,000), so zlock asks before it waits for a busy
    lock, not while it holds it.
    """
    cache = private.pickle_cache(conn)
    marker = _live_marker(cache)
    if marker is None:
        return None
    items = cache.lru_items()
    for index in range(len(items) - 1, -1, -1):
        if items[index][1] is marker:
            return {oid for oid, _ in items[index + 1:]} | private.touched_oids(conn)
    return None


def uses(connections: list[Connection]) -> dict[int, set[bytes] | None]:
    """What each connection's transaction has used so far, by ``id(conn)``: for :func:`refresh` later.

    Valid as long as the transaction uses nothing more (while it waits for a lock).
    """
    return {id(conn): used_since_view_began(conn) for conn in connections}


UNKNOWN = "what it used so far is unknown (cache minimized or no view begun since zlock started)"


class _Sight:
    """Whether one connection's transaction may have seen the old state of given objects.

    Each answer is computed only if a question needs it, and at most once.
    """

    def __init__(self, conn: Connection, used: set[bytes] | None = None) -> None:
        self.conn = conn
        self.cache = private.pickle_cache(conn)
        self.touched = private.touched_oids(conn)
        self.rollbacks_known = private.rolled_back_oids(conn) is not None
        self._used = used

    def in_memory(self, oid: bytes) -> bool:
        """True if the object is in the cache and not a ghost."""
        obj = self.cache.get(oid)
        return obj is not None and obj._p_changed is not None

    def seen(self, oids: set[bytes], may_load: bool = True) -> str | None:
        """Why the transaction may have seen the old state of one of ``oids``, or None if of none.

        ``may_load``: whether a ghost may be asked its state at the view (a
        storage load); without it such a ghost counts as seen.
        """
        if not oids:
            return None
        if not self.rollbacks_known:
            return UNKNOWN
        used_candidates = []
        for oid in oids:
            if oid in self.touched:
                return _used(oid)
            obj = self.cache.get(oid)
            if obj is None:
                continue
            visible = sees_every_read(obj)
            if obj._p_changed is None:
                if not visible and self._held_view_state(obj, may_load):
                    return ("a newer commit changed an object whose state it may have read before the "
                            "object became a ghost (oid %s, %s)" % (oid.hex(), _kind(obj)))
            elif not visible:
                return ("a newer commit changed an object it holds in memory (oid %s, %s: its state can "
                        "be read without the cache seeing it)" % (oid.hex(), _kind(obj)))
            else:
                used_candidates.append(oid)
        if _live_marker(self.cache) is None:
            return UNKNOWN
        if used_candidates:
            if self._used is None:
                self._used = used_since_view_began(self.conn)
                if self._used is None:
                    return UNKNOWN
            for oid in used_candidates:
                if oid in self._used:
                    return _used(oid)
        return None

    def _held_view_state(self, ghost: Any, may_load: bool) -> bool:
        """True unless ``ghost`` was never loaded, or its last state is older than the view's."""
        serial: bytes = ghost._p_serial
        if serial == _NEVER_LOADED:
            return False
        if not may_load:
            return True
        at_view: bytes
        try:
            _, at_view = private.normal_storage(self.conn).load(ghost._p_oid)
        except Exception as exc:  # not at the view, or the storage failed: unknown
            logger.debug("cannot load oid %s at the view of %r: %s", ghost._p_oid.hex(), self.conn, exc)
            return True
        return at_view == serial


def _used(oid: bytes) -> str:
    return "a newer commit changed an object it used before the lock (oid %s)" % oid.hex()


def _kind(obj: Any) -> str:
    cls = type(obj)
    return "a %s.%s" % (cls.__module__, cls.__qualname__)


def refresh(connections: list[Connection], used: dict[int, set[bytes] | None] | None = None) -> str | None:
    """Move the views of ``connections`` forward if nothing they may have seen changed; else why not.

    ``used`` is what :func:`uses` returned before a wait, if it was called.
    Returns None when every view now contains every commit its client has
    received (objects those commits changed are ghosts, their new states
    prefetched), or a reason (a sentence fragment) when a move would not be
    safe or is not possible.  On a reason some views may have moved already:
    the caller then retries the whole transaction.
    """
    plans = []
    for conn in connections:
        storage = private.normal_storage(conn)
        pending = private.pending_invalidations(storage)
        if pending is None:
            return "its view cannot be moved (%s)" % type(storage).__name__
        sight = _Sight(conn, (used or {}).get(id(conn)))
        why = sight.seen(pending)
        if why is not None:
            return why
        plans.append((conn, storage, sight, pending))
    for conn, storage, sight, checked in plans:
        why = _move(conn, storage, sight, checked)
        if why is not None:
            return why
    return None


def _move(conn: Connection, storage: Any, sight: _Sight, checked: set[bytes]) -> str | None:
    """Ghostify the changed objects (none of them seen), then move the view; None if moved.

    Invalidations that arrive meanwhile are judged under the storage
    instance's lock, where no load is possible: a ghost among them that
    would need one counts as seen.
    """
    wanted = [oid for oid in checked if sight.in_memory(oid)]
    sight.cache.invalidate(list(checked))  # harmless at the old view too: none of them was seen
    last_tid = conn.db().storage.lastTransaction()
    refused: list[str] = []

    def accept(oids: set[bytes]) -> bool:
        why = sight.seen(oids - checked, may_load=False)
        if why is not None:
            refused.append(why)
        return why is None

    def invalidate(oids: set[bytes]) -> None:
        arrived = oids - checked
        wanted.extend(oid for oid in arrived if sight.in_memory(oid))
        sight.cache.invalidate(list(arrived))

    oids = private.advance_view(storage, last_tid, accept, invalidate)
    if oids is None:
        return refused[0] if refused else "its view cannot be moved now"
    if wanted:
        try:
            conn.prefetch(wanted)
        except Exception as exc:  # only a speed-up: the loads that follow fetch what is missing
            logger.debug("prefetch after moving the view of %r failed: %s", conn, exc)
    logger.debug("view of %r moved forward in place: %d objects changed, %d prefetched",
                 conn, len(oids), len(wanted))
    return None


__all__ = ["AccessMarker", "MARKER_OID", "mark_view_begin", "used_since_view_began", "uses", "refresh",
           "sees_every_read"]
