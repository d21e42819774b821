"""Every read of a private attribute of ZODB or transaction, behind one small function each.

zlock needs a few facts that neither package exposes publicly: the
connection's storage instance (``Connection._normal_storage``), the tid its
snapshot reads before and the last tid it committed
(``MVCCAdapterInstance._start`` and ``._ltid``), and the resources and
synchronizers of a transaction (``Transaction._resources`` and
``._synchronizers``).  To move a view forward in the middle of a
transaction (``viewmove.py``) it also reads the invalidations a storage
instance has received but not yet applied (``._invalidations`` under
``._lock``), and what the connection changed or asked to keep current
(``Connection._registered_objects``, ``._readCurrent``, the oids in
``._savepoint_storage.index``) and its pickle cache (``._cache``), and it
wraps one connection method on the instance, ``._abort``, to learn what a
savepoint's rollback ghostifies (:func:`watch_rollbacks`).
Keeping them here means one place to change when ZODB or transaction
renames something, and one canary test (``tests/test_zodb_private.py``)
that fails loudly when they do.  Each function degrades to "unknown"
instead of raising.

The public methods zlock calls on those objects are named here too, as
Protocols (neither package ships type information).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

try:
    from ZODB.utils import p64, u64
except ImportError:  # zlock then behaves like rlock and never asks
    p64 = u64 = None

Hook = Callable[..., object]


class Transaction(Protocol):
    """What zlock calls on a ``transaction.Transaction``: its data slots and its hooks."""

    def data(self, ob: object) -> object:
        """What ``set_data`` stored for ``ob``; KeyError if nothing."""

    def set_data(self, ob: object, ob_data: object) -> None:
        """Store ``ob_data`` for ``ob`` (keyed by its id) until the transaction ends."""

    def addBeforeCommitHook(self, hook: Hook, args: Sequence[object] = (), kws: dict[str, object] | None = None
                            ) -> None:
        """Call ``hook(*args, **kws)`` when the commit begins."""

    def addAfterCommitHook(self, hook: Hook, args: Sequence[object] = (), kws: dict[str, object] | None = None
                           ) -> None:
        """Call ``hook(status, *args, **kws)`` after the commit (``status``: True if it succeeded)."""

    def addAfterAbortHook(self, hook: Hook, args: Sequence[object] = (), kws: dict[str, object] | None = None
                          ) -> None:
        """Call ``hook(*args, **kws)`` after an abort."""


class Storage(Protocol):
    """What zlock calls on a storage (a ZEO ``ClientStorage``, a ``FileStorage``...)."""

    def lastTransaction(self) -> bytes:
        """The newest tid this client knows of."""


class Database(Protocol):
    """What zlock reads of a ``ZODB.DB``."""

    @property
    def storage(self) -> Storage:
        """The database's storage, shared by its connections."""


class Connection(Protocol):
    """What zlock calls on a ``ZODB.Connection.Connection``."""

    def db(self) -> Database:
        """The connection's database."""

    def newTransaction(self, transaction: Transaction, sync: bool = True) -> None:
        """Begin a new view: apply the invalidations received (after a ``sync`` if asked)."""

    def prefetch(self, *reftargets: object) -> None:
        """Ask the storage for the current state of the given oids (or objects) in one batch."""


#: The private names read, per owner, as the canary test checks them.
PRIVATE_NAMES = {
    "ZODB.Connection.Connection": ("_normal_storage", "_cache", "_registered_objects", "_savepoint_storage",
                                   "_readCurrent", "_abort"),
    "ZODB.Connection.TmpStore": ("index",),
    "ZODB.mvccadapter.MVCCAdapterInstance": ("_start", "_ltid", "_lock", "_invalidations"),
    "transaction.Transaction": ("_resources", "_synchronizers"),
}


def normal_storage(conn: Any) -> Any:
    """The connection's own storage instance (its MVCC view), or None once closed."""
    return getattr(conn, "_normal_storage", None)


def view_start(storage: Any) -> bytes | None:
    """The tid the storage instance's snapshot reads before, or None if unknown."""
    start = getattr(storage, "_start", None)
    return start if isinstance(start, bytes) and len(start) == 8 else None


def last_committed(storage: Any) -> bytes | None:
    """The last tid the storage instance committed, or None if unknown."""
    ltid = getattr(storage, "_ltid", b"")
    return ltid if isinstance(ltid, bytes) and len(ltid) == 8 else None


def resources(txn: Transaction) -> list[object]:
    """The data managers joined to the transaction."""
    return list(getattr(txn, "_resources", ()))


def each_synchronizer(txn: Transaction, function: Callable[[object], None]) -> None:
    """Call ``function`` with each synchronizer of the transaction's manager (its connections)."""
    synchronizers = getattr(txn, "_synchronizers", None)
    if synchronizers is not None:
        synchronizers.map(function)


def pickle_cache(conn: Any) -> Any:
    """The connection's pickle cache, or None."""
    return getattr(conn, "_cache", None)


#: Where :func:`watch_rollbacks` keeps, on a connection, the oids its ``_abort`` ghostified (None: unknown).
_ROLLED_BACK = "_unimr_memcachedlock_rolled_back"


def watch_rollbacks(conn: Any) -> None:
    """From now on, remember the objects a savepoint rollback of ``conn`` ghostifies, until its view ends.

    A rollback (``Connection._rollback_savepoint``, or an ``AbortSavepoint``
    of a connection that joined after the savepoint: both end in
    ``Connection._abort``) turns objects the transaction changed back into
    ghosts and forgets that they were changed; their uses before then leave
    no trace in the pickle cache either.  :func:`touched_oids` counts them
    as used until :func:`forget_rollbacks` (a new view; a record kept longer
    only refuses more).  Installed once per connection, on the instance;
    never raises.
    """
    if _ROLLED_BACK in vars(conn) or not callable(getattr(conn, "_abort", None)):
        return
    real_abort = conn._abort

    def _abort() -> None:
        try:
            oids = {obj._p_oid for obj in conn._registered_objects}
            savepoints = conn._savepoint_storage
            if savepoints is not None:
                oids.update(savepoints.index)
            vars(conn)[_ROLLED_BACK].update(oids)
        except Exception:  # only a record: the abort itself must happen
            vars(conn)[_ROLLED_BACK] = None
        real_abort()

    vars(conn)[_ROLLED_BACK] = set()
    conn._abort = _abort


def forget_rollbacks(conn: Any) -> None:
    """A new view begins: the rollbacks recorded so far no longer matter."""
    if _ROLLED_BACK in vars(conn):
        vars(conn)[_ROLLED_BACK] = set()


def rolled_back_oids(conn: Any) -> set[bytes] | None:
    """Oids a rollback ghostified since the connection's view began; None if that is unknown."""
    rolled_back: set[bytes] | None = vars(conn).get(_ROLLED_BACK)
    return rolled_back


def touched_oids(conn: Any) -> set[bytes]:
    """Oids the connection's transaction changed (also before a savepoint or rolled back) or asked to keep current.

    ``Connection._modified`` is not used: it is reset when a commit begins,
    not when a transaction ends, so it still lists the last commit's objects.
    """
    oids = {obj._p_oid for obj in getattr(conn, "_registered_objects", ())}
    oids.update(rolled_back_oids(conn) or ())
    savepoints = getattr(conn, "_savepoint_storage", None)
    if savepoints is not None:
        oids.update(savepoints.index)
    oids.update(getattr(conn, "_readCurrent", {}))
    return oids


def pending_invalidations(storage: Any) -> set[bytes] | None:
    """Oids changed by commits newer than the storage instance's view, or None if unknown.

    These are the invalidations the instance has received and will apply
    when its connection's next transaction begins.  None when the storage
    keeps no such set (RelStorage) or its cache must be dropped whole.
    """
    lock = getattr(storage, "_lock", None)
    if lock is None or view_start(storage) is None:
        return None
    with lock:
        pending = getattr(storage, "_invalidations", None)
        return None if pending is None else set(pending)


def advance_view(storage: Any, last_tid: bytes, accept: Callable[[set[bytes]], bool],
                 invalidate: Callable[[set[bytes]], None]) -> set[bytes] | None:
    """Move the instance's view past every commit it has received; the oids those commits changed.

    What ``poll_invalidations`` does when a transaction begins, but only if
    ``accept(oids)`` agrees, with the instance's lock held so that no
    invalidation arrives between the check and the move.  ``invalidate(oids)``
    ghostifies them in the connection's cache before the view moves, and the
    received set is emptied only after: an interrupt at any point leaves
    either the old view, or the new view with every changed object a ghost
    (its invalidation still queued for the next poll, which is harmless).
    ``last_tid`` is the storage's ``lastTransaction()``, read by the caller
    *before*: ZEO holds its cache lock while it takes this instance's lock,
    so reading it here could deadlock.  Returns None, changing nothing, if
    not accepted.
    """
    with storage._lock:
        pending = storage._invalidations
        if pending is None:
            return None
        oids = set(pending)
        if not accept(oids):
            return None
        invalidate(oids)
        storage._start = p64(u64(max(last_tid, storage._ltid)) + 1)
        pending.difference_update(oids)
        return oids
