"""LockBusy, zlock's retry signal, and how a transaction hook tells a ConflictError from it.

LockBusy must be a ``ConflictError`` (so that every retry loop retries it) where ZODB is installed,
which is why it lives here and not in :mod:`unimr.memcachedlock.errors`.
"""

from __future__ import annotations

import sys

from ..errors import MemcachedLockError

try:
    from transaction.interfaces import TransientError
except ImportError:  # zlock then behaves like rlock
    TransientError = None

try:
    from ZODB.POSException import ConflictError
except ImportError:  # zlock then behaves like rlock
    ConflictError = None


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


def conflicted() -> bool:
    """True if the exception being handled is a ConflictError that zlock did not raise itself.

    Transaction hooks run inside the ``except`` block of a failed commit or of
    the caller's abort, so ``sys.exc_info()`` tells why the transaction failed.
    """
    exc = sys.exc_info()[1]
    return ConflictError is not None and isinstance(exc, ConflictError) and not isinstance(exc, LockBusy)


__all__ = ["LockBusy", "conflicted"]
