"""Lock objects with the protocol of ``threading.Lock`` and ``threading.RLock``.

The lock lives in a lock store shared by every thread and process that uses
the same key.  Each acquisition gets its own lease (and token) from the
store, so two threads of one process exclude each other just as two
processes do.  This module owns the waiting: a first immediate attempt,
then the shared, fair wait of :mod:`.waiting` (one poller per process and
key, wake-ups on release, turns between processes), bounded by the
caller's deadline.

Map of one acquisition and release, file by file:

1. ``keys.lock_name`` turns the key into a lock name; ``registry.get_backend``
   gives the process's store (``backends/memcached.py``, ``file.py`` or
   ``fallback.py``).
2. ``Lock.acquire`` (here) asks the store once: ``backend.acquire`` stores a
   holder record (``backends/records.py``) and returns a lease (``lease.py``),
   which the renewer thread (``renewer.py``) keeps alive while it is held.
3. If the lock is taken, ``waiting.wait_for`` queues the thread: one poller per
   process and key, wake-ups, turns between processes announced on the store's
   waiter board (``backend.waiter_board``: in memcached, or in the lock directory
   for the file store and the fallback store's outages), in ``keystate.py``.
4. ``Lock.release`` offers the lease to a waiting thread of this process
   (``waiting.hand_over``), else releases it (token compared) and wakes the
   waiter the release found (``waiting.released``); ``metrics`` counts both.
"""

from __future__ import annotations

import logging
import math
import operator
import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from zope.interface import implementer

from . import metrics, waiting
from .backends.base import Backend
from .errors import InvalidArgument, NotHeld, TimeoutTooLarge
from .interfaces import ILock
from .keys import lock_name
from .lease import Lease, abandon
from .options import DEFAULT_INTERVAL, DEFAULT_TIMEOUT, MAX_INTERVAL, MAX_LEASE, check_seconds, old_interval
from .registry import get_backend

logger = logging.getLogger(__name__)

_L = TypeVar("_L", bound="BaseLock")


def wait_deadline(blocking: bool, timeout: float) -> float | None:
    """Check ``acquire``'s arguments as threading does; return the monotonic deadline.

    As ``threading.Lock.acquire``: ``blocking`` must be an integer (a bool is
    one), ``timeout`` a real number (True counts as 1 second); a timeout
    above ``threading.TIMEOUT_MAX`` raises TimeoutTooLarge, an OverflowError.
    None means no deadline; a deadline in the past means "try once".
    """
    blocks = operator.index(blocking)
    if not isinstance(timeout, (int, float)):
        raise TypeError("timeout must be a number, not %s" % type(timeout).__name__)
    if isinstance(timeout, float) and math.isnan(timeout):
        raise InvalidArgument("Invalid value NaN (not a number)")
    if not blocks:
        if timeout != -1:
            raise InvalidArgument("can't specify a timeout for a non-blocking call")
        return 0.0
    if timeout == -1:
        return None
    if timeout < 0:
        raise InvalidArgument("timeout value must be a non-negative number")
    if timeout > threading.TIMEOUT_MAX:
        raise TimeoutTooLarge("timeout value is too large: %.3g seconds (at most %g)"
                              % (float(timeout) if timeout < 1e308 else math.inf, threading.TIMEOUT_MAX))
    return time.monotonic() + timeout


@implementer(ILock)
class BaseLock:
    """What Lock and RLock share: the key, the store and the wait loop."""

    __slots__ = ("key", "name", "timeout", "interval", "on_lost", "_backend", "_lease", "_lost", "__weakref__")

    #: Ask the store to read the lock's note with the acquisition (zlock's locks; see ``ILockBackend``).
    reads_note = False

    def __init__(
        self,
        key: str | bytes | int,
        timeout: float = DEFAULT_TIMEOUT,
        interval: float = DEFAULT_INTERVAL,
        backend: Backend | None = None,
        on_lost: Callable[[Lease], None] | None = None,
    ) -> None:
        self.name = lock_name(key)
        self.key = key
        self.timeout = check_seconds("lock timeout (lease)", timeout, MAX_LEASE)
        self.interval = check_seconds("lock interval", interval, MAX_INTERVAL)
        self.on_lost = on_lost
        self._backend = backend
        self._lease: Lease | None = None
        self._lost = False

    @property
    def backend(self) -> Backend:
        """The lock store: the one given, else the process's configured store."""
        return self._backend if self._backend is not None else get_backend()

    @property
    def lost(self) -> bool:
        """True if the lease ran out or was broken while this object held the lock.

        Still answers after ``release()`` (which is when a caller asks whether
        its critical section was safe), until the next acquisition.
        """
        lease = self._lease
        return lease.lost if lease is not None else self._lost

    @property
    def lease(self) -> Lease | None:
        """The current acquisition, while this object holds the lock (even if its lease was lost)."""
        lease = self._lease
        if lease is None or lease.released or lease.pid != os.getpid():
            return None
        return lease

    def _take(self, deadline: float | None) -> Lease | None:
        """Acquire from the store, waiting until ``deadline`` (None: no limit).

        The first attempt goes straight to the store unless other threads of
        this process already queue for the key, or this process yields it to
        a waiting process (see ``waiting``); then the wait is shared and fair.
        """
        backend = self.backend
        name = self.name
        ttl = self.timeout
        started = time.monotonic()
        must_wait = deadline is None or deadline > started
        lease: Lease | None = None
        if self.reads_note:
            def attempt() -> Lease | None:
                return backend.acquire(name, ttl, with_note=True)
        else:
            def attempt() -> Lease | None:
                return backend.acquire(name, ttl)
        tried = not must_wait or not waiting.must_queue(backend, name)
        if tried:
            lease = attempt()
        if lease is None and must_wait:
            lease = waiting.wait_for(backend, name, attempt, deadline, self.interval, not tried, ttl)
            if lease is None:
                return None
            if lease.started < started:
                lease.handed_to(ttl)  # handed over by a releasing thread of this process
            waited = time.monotonic() - started
            metrics.record_acquire(name, waited, True)
        elif lease is None:
            return None
        else:
            metrics.record_acquire(name, 0.0, False)
        if self.on_lost is not None:
            lease.on_lost = self.on_lost
        self._lost = False
        return lease

    def _give_back(self, lease: Lease) -> None:
        """Hand ``lease`` to a waiting thread of this process, or release it.

        An interrupt anywhere in here leaves ``lease`` unreferenced: its
        finalizer has the reaper release it (see ``lease``).
        """
        metrics.record_release(self.name, time.monotonic() - lease.started)
        if lease.lost:
            metrics.record_lost(self.name)
        try:
            handed = waiting.hand_over(self.backend, self.name, lease)
        except Exception:
            logger.exception("handing lock %s to a waiting thread failed; releasing it", self.name)
            handed = False
        if handed:
            self._lost = False
            return
        lease.release()
        self._lost = lease.lost
        waiting.released(self.backend, self.name, lease.successor)

    def locked(self) -> bool:
        """True if anybody (this object, another thread or process) holds the lock."""
        if self.lease is not None:
            return True
        return not self.backend.may_be_available(self.name)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock; see ``threading.Lock.acquire`` (Lock and RLock implement it)."""
        raise NotImplementedError

    def release(self) -> None:
        """Give the lock back (Lock and RLock implement it)."""
        raise NotImplementedError

    def __enter__(self: _L) -> _L:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __del__(self) -> None:
        # A finalizer may run in any thread holding any lock: the reaper releases.
        lease = getattr(self, "_lease", None)
        if lease is not None and not lease.released and lease.pid == os.getpid():
            abandon(lease)

    def _state(self) -> str:
        return "locked" if self.lease is not None else "unlocked"


class Lock(BaseLock):
    """A distributed ``threading.Lock``: not reentrant; any thread may release it."""

    __slots__ = ("_guard",)

    def __init__(self, key: str | bytes | int, timeout: float = DEFAULT_TIMEOUT, interval: float = DEFAULT_INTERVAL,
                 backend: Backend | None = None, on_lost: Callable[[Lease], None] | None = None) -> None:
        super().__init__(key, timeout, interval, backend, on_lost)
        self._guard = threading.Lock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock; see ``threading.Lock.acquire``."""
        lease = self._take(wait_deadline(blocking, timeout))
        if lease is None:
            return False
        with self._guard:
            self._lease = lease
        return True

    def release(self) -> None:
        """Give the lock back; RuntimeError (NotHeld) if it is not held."""
        with self._guard:
            lease, self._lease = self._lease, None
        if lease is None or lease.released or lease.pid != os.getpid():
            raise NotHeld("release unlocked lock")
        self._give_back(lease)

    def __repr__(self) -> str:
        return "<%s %s.%s object key=%r at %s>" % (
            self._state(), type(self).__module__.rsplit(".", 1)[0], type(self).__name__,
            self.key, hex(id(self)),
        )


class RLock(BaseLock):
    """A distributed ``threading.RLock``: owned by one thread, reentrant there."""

    __slots__ = ("_owner", "_count")

    def __init__(self, key: str | bytes | int, timeout: float = DEFAULT_TIMEOUT, interval: float = DEFAULT_INTERVAL,
                 backend: Backend | None = None, on_lost: Callable[[Lease], None] | None = None) -> None:
        super().__init__(key, timeout, interval, backend, on_lost)
        self._owner: int | None = None
        self._count = 0

    def _is_owned(self) -> bool:
        return self._owner == threading.get_ident() and self.lease is not None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock, or count one more level if this thread holds it."""
        deadline = wait_deadline(blocking, timeout)
        if self._is_owned():
            self._count += 1
            return True
        lease = self._take(deadline)
        if lease is None:
            return False
        self._owner = threading.get_ident()
        self._count = 1
        self._lease = lease  # last: until here an interrupt leaves the lease to its finalizer
        return True

    def release(self) -> None:
        """Leave one level; the last one gives the lock back.  RuntimeError if not owned."""
        lease = self.lease
        if lease is None or self._owner != threading.get_ident():  # not ``_is_owned()``
            raise NotHeld("cannot release un-acquired lock")
        count = self._count - 1
        if count > 0:
            self._count = count
            return
        self._lease, self._owner, self._count = None, None, 0
        self._give_back(lease)

    def __repr__(self) -> str:
        return "<%s %s.%s object key=%r owner=%s count=%d at %s>" % (
            self._state(), type(self).__module__.rsplit(".", 1)[0], type(self).__name__,
            self.key, self._owner or 0, self._count if self.lease is not None else 0, hex(id(self)),
        )


def lock_getter(key: str | bytes | int, timeout: float = DEFAULT_TIMEOUT, interval: float = DEFAULT_INTERVAL, *,
                backend: Backend | None = None, on_lost: Callable[[Lease], None] | None = None,
                **kw: float) -> Lock:
    """A Lock for ``key`` (the 2009 factory; ``intervall`` is accepted, deprecated)."""
    return Lock(key, timeout, old_interval(interval, kw), backend=backend, on_lost=on_lost, **kw)


def rlock_getter(key: str | bytes | int, timeout: float = DEFAULT_TIMEOUT, interval: float = DEFAULT_INTERVAL, *,
                 backend: Backend | None = None, on_lost: Callable[[Lease], None] | None = None,
                 **kw: float) -> RLock:
    """An RLock for ``key`` (the 2009 factory; ``intervall`` is accepted, deprecated)."""
    return RLock(key, timeout, old_interval(interval, kw), backend=backend, on_lost=on_lost, **kw)
