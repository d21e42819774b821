"""Distributed locks for Zope and ZODB: memcached, flock, or both.

See README.rst.  The 2009 import path ``from unimr.memcachedlock import
memcachedlock`` still works and gives the same objects.
"""

from __future__ import annotations

from .backends.records import Holder
from .config import get_settings
from .decorators import lock, rlock
from .errors import (
    BackendUnavailable,
    ConfigurationError,
    DontLock,
    InvalidArgument,
    InvalidKey,
    LockTimeout,
    MemcachedLockError,
    NotHeld,
    SelfDeadlock,
    TimeoutTooLarge,
)
from .lease import release_all
from .locks import Lock, RLock, lock_getter, rlock_getter
from .registry import configure, get_backend, reset, set_backend
from .zodb import LockBusy, lock_for_transaction, zlock

__all__ = [
    "lock", "rlock", "zlock", "lock_for_transaction", "LockBusy", "lock_getter", "rlock_getter", "Lock", "RLock",
    "DontLock",
    "MemcachedLockError", "ConfigurationError", "InvalidArgument", "InvalidKey", "TimeoutTooLarge",
    "NotHeld", "SelfDeadlock", "LockTimeout", "BackendUnavailable", "Holder",
    "configure", "get_backend", "get_settings", "reset", "set_backend", "release_all",
]
