"""Leases: one per acquisition, owning its token, renewal and release.

Backends subclass :class:`Lease` and implement ``_release`` and ``_renew``.
The base class makes release idempotent and quiet (it never raises, so
transaction hooks can call it), tracks the leases this process holds (for
``release_all`` and for forked children, which must not believe they hold
their parent's locks) and hands long leases to the process's renewer.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from typing import Callable

from zope.interface import implementer

from .errors import BackendUnavailable
from .interfaces import ILease

logger = logging.getLogger(__name__)

#: Every lease this process holds and has not released (weakly: a lost lock object frees its lease).
_live: "weakref.WeakSet[Lease]" = weakref.WeakSet()
_live_lock = threading.Lock()


def store_ttl(ttl: float) -> int:
    """Whole seconds to give a store for a lease of ``ttl`` seconds.

    memcached counts TTLs in whole seconds on a clock that ticks once a
    second, so an item given N seconds lives between N-1 and N.  At least two
    keeps a lease alive for a full second before the first renewal.
    """
    return max(2, math.ceil(ttl))


def renew_period(ttl: float) -> float:
    """How often a lease of ``ttl`` seconds is renewed: well inside its shortest life."""
    return max(0.2, (store_ttl(ttl) - 1) / 2.0)


@implementer(ILease)
class Lease:
    """One acquisition.  Subclasses implement ``_release()`` and ``_renew(ttl)``."""

    __slots__ = (
        "backend", "name", "token", "value", "ttl", "pid", "released", "lost",
        "on_lost", "started", "renew_until", "__weakref__",
    )

    def __init__(self, backend, name: str, token: str, value: bytes, ttl: float) -> None:
        self.backend = backend
        self.name = name
        self.token = token
        self.value = value
        self.ttl = ttl
        self.pid = os.getpid()
        self.started = time.monotonic()
        self.released = False
        self.lost = False
        self.on_lost: Callable[[Lease], None] | None = None
        #: Monotonic time after which the renewer releases the lease instead of
        #: renewing it (zlock's reservations); None renews while held.
        self.renew_until: float | None = None
        with _live_lock:
            _live.add(self)
        from .renewer import get_renewer

        get_renewer().register(self)

    @property
    def held(self) -> bool:
        """True while this process still holds the lease (as far as it knows)."""
        return not self.released and not self.lost and self.pid == os.getpid()

    def release(self) -> bool:
        """Remove the lock if it is still ours.  Idempotent; never raises."""
        if self.released or self.pid != os.getpid():
            return False
        self.released = True
        with _live_lock:
            _live.discard(self)
        try:
            ours = self._release()
        except Exception:
            logger.warning("could not release lock %s: left to expire", self.name, exc_info=True)
            return False
        if ours is None:
            return False
        if not ours and not self.lost:
            self.lost = True
            logger.warning(
                "lock %s had expired or been broken before its release (lease %.1fs)",
                self.name, self.ttl,
            )
            # Found only now, so the lock object's give-back has not counted it.
            from . import metrics

            metrics.record_lost(self.name)
        return ours

    def renew(self, ttl: float | None = None) -> bool:
        """Extend the lease if still ours; BackendUnavailable if the store is unreachable."""
        if not self.held:
            return False
        if ttl is not None:
            self.ttl = ttl
        if self._renew(self.ttl):
            return True
        self.mark_lost()
        return False

    def handed_to(self, ttl: float) -> bool:
        """This lease now serves another lock object (and thread) of this process.

        See ``waiting.hand_over``.  Stores that keep holder records rewrite
        them; True if the lock is still ours.
        """
        self.ttl = ttl
        self.started = time.monotonic()
        self.on_lost = None
        self.renew_until = None
        return True

    def mark_lost(self) -> None:
        """Record that the lock is no longer ours, log it once and tell the owner."""
        if self.lost:
            return
        self.lost = True
        logger.warning(
            "lost lock %s: its lease (%.1fs) expired or was broken while held", self.name, self.ttl
        )
        callback = self.on_lost
        if callback is not None:
            try:
                callback(self)
            except Exception:
                logger.exception("on_lost callback for lock %s failed", self.name)

    def forget(self) -> None:
        """Stop believing this lease is held, without touching the store (after fork)."""
        self.released = True
        try:
            self._forget()
        except Exception:
            logger.debug("forgetting lease %s failed", self.name, exc_info=True)

    def _release(self) -> bool | None:
        """Remove the lock if it holds our value: True if removed, False if it was
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


def live_leases(backend=None) -> list[Lease]:
    """Leases this process holds, optionally only those of ``backend``."""
    with _live_lock:
        leases = list(_live)
    pid = os.getpid()
    return [
        lease for lease in leases
        if lease.pid == pid and not lease.released and (backend is None or lease.backend is backend)
    ]


def release_all(backend=None) -> int:
    """Release every lease this process holds (of ``backend``, or all); return how many were ours."""
    count = 0
    for lease in live_leases(backend):
        if lease.release():
            count += 1
    return count


def _after_fork_in_child() -> None:
    global _live_lock
    _live_lock = threading.Lock()
    for lease in list(_live):
        lease.forget()
    _live.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = ["Lease", "live_leases", "release_all", "store_ttl", "renew_period", "BackendUnavailable"]
