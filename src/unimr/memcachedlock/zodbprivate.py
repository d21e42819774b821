"""Every read of a private attribute of ZODB or transaction, behind one small function each.

zlock needs a few facts that neither package exposes publicly: the
connection's storage instance (``Connection._normal_storage``), the tid its
snapshot reads before and the last tid it committed
(``MVCCAdapterInstance._start`` and ``._ltid``), and the resources and
synchronizers of a transaction (``Transaction._resources`` and
``._synchronizers``).  Keeping them here means one place to change when
ZODB or transaction renames something, and one canary test
(``tests/test_zodb_private.py``) that fails loudly when they do.  Each
function degrades to "unknown" instead of raising.
"""

from __future__ import annotations

from typing import Any, Callable

#: The private names read, per owner, as the canary test checks them.
PRIVATE_NAMES = {
    "ZODB.Connection.Connection": ("_normal_storage",),
    "ZODB.mvccadapter.MVCCAdapterInstance": ("_start", "_ltid"),
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


def resources(txn: Any) -> list:
    """The data managers joined to the transaction."""
    return list(getattr(txn, "_resources", ()))


def each_synchronizer(txn: Any, function: Callable[[Any], None]) -> None:
    """Call ``function`` with each synchronizer of the transaction's manager (its connections)."""
    synchronizers = getattr(txn, "_synchronizers", None)
    if synchronizers is not None:
        synchronizers.map(function)
