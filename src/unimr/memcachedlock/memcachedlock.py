"""The 2009 import path: ``from unimr.memcachedlock import memcachedlock``.

Old code calls ``memcachedlock.lock(get_key)``, ``memcachedlock.rlock``,
``memcachedlock.zlock``, ``memcachedlock.lock_getter`` and raises
``memcachedlock.DontLock``; all of them are the package's current objects.
"""

from __future__ import annotations

from .decorators import lock, rlock
from .errors import DontLock
from .locks import lock_getter, rlock_getter
from .zodb import zlock

__all__ = ["lock", "rlock", "zlock", "DontLock", "lock_getter", "rlock_getter"]
