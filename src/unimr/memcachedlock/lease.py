"""Leases: one per acquisition, owning its token, renewal and release.

Backends subclass :class:`Lease` and implement ``_release`` and ``_renew``.
The base class makes release idempotent and quiet (it never raises, so
transaction hooks can call it), tracks the leases this process holds (for
``release_all`` and for forked children, which must not believe they hold
their parent's locks) and hands long leases to the process's renewer.

Interrupt safety
----------------
A lease owns its lock in the store from the moment it exists.  Whatever
interrupts the code between "granted" and "recorded in the lock object", or
between "release started" and "given back" (KeyboardInterrupt, an exception
raised by a signal handler), leaves a lease nobody refers to any more, and a
lease that is garbage collected while still held releases itself: its
finalizer queues it for the *reaper* thread, which gives the lock back.  A
release that is interrupted half-way queues the lease for the reaper too.
The reaper does the network or file work, never the finalizer (which may
run at any point, in any thread, holding any lock).

Renewal against release
-----------------------
``renew`` and ``release`` of one lease are serialised by a per-lease lock, so
a release never runs between a renewal's read and its write: it always sees
(and removes) the item as last written, and is not mistaken for a loss.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

from zope.interface import implementer

from .errors import BackendUnavailable
from .interfaces import ILease
from .renewer import MAX_CHECK_PERIOD, get_renewer

logger = logging.getLogger(__name__)

#: Every lease this process holds and has not released (weakly: a lost lock object frees its lease).
_live: weakref.WeakSet[Lease] = weakref.WeakSet()
_live_lock = threading.Lock()


class LeaseTime:
    """What a lease's time means in its store: the TTL a store is given, how long a record surely lives,
    how often the renewer renews it.  A base of ``Lease``; a store whose records live otherwise overrides it."""

    __slots__ = ()

    #: True for stores whose items expire on their own (memcached); a file lock does not.
    expiring = False

    @staticmethod
    def store_ttl(ttl: float) -> int:
        """Whole seconds to give a store for a lease of ``ttl`` seconds.

        memcached counts TTLs in whole seconds on a clock that ticks once a
        second, so an item given N seconds lives between N-1 and N.  At least two
        keeps a lease alive for a full second before the first renewal.
        """
        return max(2, math.ceil(ttl))

    @classmethod
    def shortest_life(cls, ttl: float) -> float:
        """Seconds an item stored for a lease of ``ttl`` is sure to live (memcached: N-1 of N).

        Stores whose records do not expire (``expiring`` False) keep the same
        schedule: their records state the expiry for inspection.
        """
        return cls.store_ttl(ttl) - 1.0

    @classmethod
    def renew_period(cls, ttl: float) -> float:
        """How often a lease of ``ttl`` seconds is renewed.

        A third of the item's shortest life, so that a renewal that is late by up
        to two periods (a stall, a hung server answering within its timeout)
        still comes in time; at most MAX_CHECK_PERIOD, so a lock that a server
        restart or an eviction took is noticed within that.
        """
        return min(MAX_CHECK_PERIOD, max(0.2, cls.shortest_life(ttl) / 3.0))


@implementer(ILease)
class Lease(LeaseTime):
    """One acquisition.  Subclasses implement ``_release()`` and ``_renew(ttl)``.

    ``sent`` is the monotonic time at which the request that stored the lock
    was sent (default: now); with ``expiring`` stores the lease is only
    known to be ours until ``deadline``, the item's shortest life after the
    last store that succeeded.
    """

    __slots__ = (
        "backend", "name", "token", "value", "ttl", "pid", "released", "_lost",
        "on_lost", "started", "renew_until", "renew_seq", "deadline", "_guard", "__weakref__",
    )

    #: The waiter announcement the release found next to the lock (stores with a waiter board set it).
    successor: bytes | None = None

    def __init__(self, backend: object, name: str, token: str, value: bytes, ttl: float,
                 sent: float | None = None) -> None:
        self.backend = backend  # callers only compare it with a store: ``lease.backend is store``
        self.name = name
        self.token = token
        self.value = value
        self.ttl = ttl
        self.pid = os.getpid()
        self.started = time.monotonic()
        self.deadline = (self.started if sent is None else sent) + self.shortest_life(ttl)
        self._lost = False
        self.on_lost: Callable[[Lease], None] | None = None
        #: Monotonic time after which the renewer releases the lease instead of
        #: renewing it (zlock's reservations); None renews while held.
        self.renew_until: float | None = None
        #: The renewer's current schedule entry for this lease (see ``Renewer.register``).
        self.renew_seq = -1
        self._guard = threading.Lock()
        self.released = True  # not ours to give back until the last line
        _start_reaper()
        with _live_lock:
            _live.add(self)
        get_renewer().register(self)
        # The lease owns the lock from here on: its finalizer gives it back if it is dropped.
        # Until here an interrupt leaves the lock to the backend's acquire (see MemcachedBackend).
        self.released = False

    @property
    def held(self) -> bool:
        """True while this process still holds the lease (as far as it knows)."""
        return not self.released and not self._lost and self.pid == os.getpid()

    @property
    def lost(self) -> bool:
        """True once the lock may no longer be ours: a renewal or release found
        another token (or none), or, while held, the lease is past its deadline
        (not renewed in time: its item may have expired).  The holder sees the
        latter at once, without waiting for the renewer to run.
        """
        return self._lost or (not self.released and self.past_deadline())

    def release(self) -> bool:
        """Remove the lock if it is still ours.  Idempotent; never raises an Exception.

        An interrupt (KeyboardInterrupt, or whatever a signal handler raises)
        is passed on, and the reaper finishes the release.
        """
        return self._give_back(quiet=False)

    def _give_back(self, quiet: bool) -> bool:
        if self.released or self.pid != os.getpid():
            return False
        with self._guard:
            ours, lapsed = self._give_back_guarded()
        if (lapsed or ours is False) and not self._lost:
            self._lost = True
            if not quiet:
                logger.warning(
                    "lock %s had expired or been broken before its release (lease %.1fs%s)",
                    self.name, self.ttl, ", not renewed in time" if lapsed else "",
                )
            if not quiet and not lapsed:
                # Found only now, so the lock object's give-back has not counted it.
                from . import metrics

                metrics.record_lost(self.name)
        return bool(ours)

    def _give_back_guarded(self) -> tuple[bool | None, bool]:
        """``_release`` under the guard: (its answer, True if the lease had lapsed before); (None, False)
        if there was nothing to give back (released by another thread since the caller looked) or it failed."""
        if self.released:
            return None, False
        lapsed = self.past_deadline()
        try:
            ours = self._release()
        except Exception:
            self._forget_here()
            logger.warning("could not release lock %s: left to expire", self.name, exc_info=True)
            return None, False
        except BaseException:
            abandon(self)
            raise
        self._forget_here()
        return ours, lapsed

    def _forget_here(self) -> None:
        self.released = True
        with _live_lock:
            _live.discard(self)

    def renew(self, ttl: float | None = None) -> bool:
        """Extend the lease if still ours; BackendUnavailable if the store is unreachable.

        A lease past its deadline is not renewed but marked lost at once: its
        item may have expired, and another holder may have come and gone.
        """
        if not self.held:
            return False
        with self._guard:
            if self.released or self._lost:  # released or lost in another thread since ``held`` was read
                return False
            if self.past_deadline():
                renewed = False
            else:
                if ttl is not None:
                    self.ttl = ttl
                sent = time.monotonic()
                renewed = self._renew(self.ttl)
                if renewed:
                    self.deadline = sent + self.shortest_life(self.ttl)
        if not renewed:
            self.mark_lost()
        return renewed

    def past_deadline(self) -> bool:
        """True if the store may have dropped this lease's item by now (no renewal in time)."""
        return self.expiring and time.monotonic() > self.deadline

    def handed_to(self, ttl: float) -> bool:
        """This lease now serves another lock object (and thread) of this process.

        See ``waiting.hand_over``.  Stores that keep holder records rewrite
        them; True if the lock is still ours.
        """
        self.ttl = ttl
        self.started = time.monotonic()
        self.on_lost = None
        self.renew_until = None
        get_renewer().register(self)  # a shorter lease time needs earlier renewals than scheduled
        return not self._lost

    def mark_lost(self) -> None:
        """Record that the lock is no longer ours, log it once and tell the owner.

        ``lost`` is true at once; the ``on_lost`` callback runs in a thread of
        its own, so a callback that blocks cannot delay the renewal of other leases.
        """
        if self._lost:
            return
        self._lost = True
        logger.warning(
            "lost lock %s: its lease (%.1fs) expired or was broken while held", self.name, self.ttl
        )
        callback = self.on_lost
        if callback is not None:
            threading.Thread(
                target=_call_on_lost, args=(callback, self), name="memcachedlock-on-lost", daemon=True
            ).start()

    def forget(self) -> None:
        """Stop believing this lease is held, without touching the store (after fork)."""
        self.released = True
        try:
            self._forget()
        except Exception:
            logger.debug("forgetting lease %s failed", self.name, exc_info=True)

    def _reap(self) -> None:
        """The reaper's release of an abandoned lease: nobody is left to tell of a loss."""
        self._give_back(quiet=True)

    def __del__(self) -> None:
        if not getattr(self, "released", True) and self.pid == os.getpid():
            abandon(self)

    def _release(self) -> bool | None:
        """Remove the lock if it holds our token: True if removed, False if it was
        no longer ours, None if the store could not be reached (the backend then
        cleans up later).  May raise only for unexpected failures."""
        raise NotImplementedError

    def _renew(self, ttl: float) -> bool:
        raise NotImplementedError

    def _forget(self) -> None:
        """Drop process-local resources inherited by a forked child (file descriptors)."""

    def __repr__(self) -> str:
        state = "held" if self.held else ("lost" if self.lost else "released")
        return "<%s %s %s token=%s>" % (type(self).__name__, state, self.name, self.token)


def _call_on_lost(callback: Callable[[Lease], None], lease: Lease) -> None:
    try:
        callback(lease)
    except Exception:
        logger.exception("on_lost callback for lock %s failed", lease.name)


# -- the reaper ----------------------------------------------------------------------------

class Orphan(Protocol):
    """What the reaper gives back: an abandoned lease, an unconfirmed store entry, a waiter's seat."""

    def _reap(self) -> None:
        """Give back what was abandoned (in the reaper thread)."""


#: Abandoned leases (and other orphans with a ``_reap()`` method) waiting to be given back.
#: SimpleQueue.put is safe in finalizers: it takes no lock a finalizer could already hold.
_reap_queue: queue.SimpleQueue[Orphan] = queue.SimpleQueue()
_reaper: threading.Thread | None = None
_reaper_lock = threading.Lock()


def abandon(orphan: Orphan) -> None:
    """Give ``orphan`` (a lease nobody will release, or an unconfirmed store entry) to the reaper."""
    with contextlib.suppress(AttributeError):  # interpreter shutdown has cleared the module
        _reap_queue.put(orphan)


def reap_now() -> int:
    """Give back, in this thread, what waits for the reaper; return how many (at exit, for tests)."""
    count = 0
    while True:
        try:
            orphan = _reap_queue.get_nowait()
        except queue.Empty:
            return count
        try:
            orphan._reap()
        except Exception:
            logger.warning("could not give back abandoned lock %r", orphan, exc_info=True)
        count += 1


def _start_reaper() -> None:
    global _reaper
    if _reaper is not None:
        return
    with _reaper_lock:
        if _reaper is None:
            thread = threading.Thread(target=_reap_forever, name="memcachedlock-reaper", daemon=True)
            thread.start()
            _reaper = thread


def _reap_forever() -> None:
    while True:
        orphan = _reap_queue.get()
        try:
            orphan._reap()
        except Exception:
            logger.warning("could not give back abandoned lock %r", orphan, exc_info=True)
        del orphan


def live_leases(backend: object | None = None) -> list[Lease]:
    """Leases this process holds, optionally only those of ``backend``."""
    with _live_lock:
        leases = list(_live)
    pid = os.getpid()
    return [
        lease for lease in leases
        if lease.pid == pid and not lease.released and (backend is None or lease.backend is backend)
    ]


def release_all(backend: object | None = None) -> int:
    """Release every lease this process holds (of ``backend``, or all); return how many were ours."""
    count = 0
    for lease in live_leases(backend):
        if lease.release():
            count += 1
    return count


def _after_fork_in_child() -> None:
    global _live_lock, _reaper, _reaper_lock, _reap_queue
    _live_lock = threading.Lock()
    _reaper = None
    _reaper_lock = threading.Lock()
    _reap_queue = queue.SimpleQueue()
    for lease in list(_live):
        lease.forget()
    _live.clear()


#: The lease arithmetic under its old module-level names.
store_ttl = Lease.store_ttl
shortest_life = Lease.shortest_life
renew_period = Lease.renew_period

os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(reap_now)  # the reaper is a daemon thread: do not leave its work to the lease TTL

__all__ = ["Lease", "abandon", "reap_now", "live_leases", "release_all", "store_ttl", "shortest_life", "renew_period",
           "BackendUnavailable"]
