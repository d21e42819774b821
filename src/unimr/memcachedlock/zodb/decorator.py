"""``zlock``: the decorator that holds a lock until the calling ZODB transaction ends (see the package docstring)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from ..decorators import GetKey, P, R, locking_decorator, rlocks_held, run_rlocked
from ..options import DEFAULT_CONFLICTS, DEFAULT_INTERVAL, DEFAULT_POLICY, DEFAULT_TIMEOUT, LockOptions
from .locking import hold_for_transaction
from .reservations import Manager

try:
    import transaction as _transaction
except ImportError:  # zlock then behaves like rlock
    _transaction = None


def manager_of(args: tuple[object, ...], kwargs: dict[str, object]) -> Manager | None:
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
        manager: Manager | None = getattr(getattr(value, "_p_jar", None), "transaction_manager", None)
        if manager is not None and manager is not default:
            return manager
    return None


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
    do not; see :mod:`unimr.memcachedlock.zodb.adaptive`), ``always`` (lock the
    call until the transaction ends; for writers that replace objects) or
    ``on-conflict`` (optimistic; lock at commit, and lock the whole retry
    after ``conflicts`` ConflictErrors in a row).
    ``move_view`` False turns a stale view into a retry instead of moving it
    forward in place (see :func:`lock_for_transaction`).  The call may raise
    :class:`LockBusy` (a ConflictError: retry the transaction).
    """
    options = LockOptions.from_keywords(timeout, interval, wait, kw, policy, conflicts, move_view)
    return locking_decorator(get_key, options, run_zlocked)


__all__ = ["zlock", "run_zlocked", "manager_of"]
