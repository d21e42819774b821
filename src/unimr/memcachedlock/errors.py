"""The package's exceptions.

Every exception derives from :class:`MemcachedLockError` *and* from the
built-in exception that callers of a lock already catch: ``threading``-style
code catches ``RuntimeError`` and ``ValueError``, timeouts are ``TimeoutError``
and an unreachable server is a ``ConnectionError``.  ``LockBusy``, the retry
signal of zlock, lives in :mod:`unimr.memcachedlock.zodb` because it must
subclass ZODB's ``ConflictError``.
"""

from __future__ import annotations


class MemcachedLockError(Exception):
    """Base class of every error raised by unimr.memcachedlock."""


class DontLock(MemcachedLockError):
    """Raised by a ``get_key`` function: call the decorated function unlocked.

    This is a signal, not an error; it never reaches the caller.
    """


class ConfigurationError(MemcachedLockError, ValueError):
    """A setting (server list, backend name, lock directory...) is malformed."""


class InvalidArgument(MemcachedLockError, ValueError):
    """A timeout, interval or key has a value a lock cannot work with."""


class InvalidKey(MemcachedLockError, TypeError):
    """A lock key is neither ``str``, ``bytes`` nor ``int``."""


class TimeoutTooLarge(MemcachedLockError, OverflowError):
    """A wait timeout exceeds ``threading.TIMEOUT_MAX``, as threading refuses it."""


class NotHeld(MemcachedLockError, RuntimeError):
    """``release()`` of a lock this object (or, for an RLock, thread) does not hold."""


class LockTimeout(MemcachedLockError, TimeoutError):
    """A decorated call waited for its lock longer than allowed."""


class BackendUnavailable(MemcachedLockError, ConnectionError):
    """The lock store cannot be reached (refused, timed out, hung, full disk).

    The fallback backend catches this and uses the file backend instead; only a
    memcached-only configuration lets it reach the caller.
    """


class SelfDeadlock(MemcachedLockError, RuntimeError):
    """A thread called a ``@lock`` function for a key it already holds through ``@lock``.

    ``threading.Lock`` would hang forever here; use ``@rlock`` for reentrant calls.
    """


def describe(exc: BaseException) -> str:
    """An exception as a message shows it: its class, and its text if it has one."""
    text = str(exc)
    return "%s: %s" % (type(exc).__name__, text) if text else type(exc).__name__
