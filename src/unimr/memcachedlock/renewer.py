"""One renewer thread per process keeps long-held leases alive.

A lock's lease (``timeout``) bounds how long a crashed holder blocks the
others; a live holder that works longer than its lease must not lose the
lock to a second writer.  Rather than a thread per lock, one daemon thread
renews every lease that is due, holding only weak references: a lock object
that is dropped stops being renewed.  A forked child starts without it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
import weakref
from typing import Protocol

from .errors import BackendUnavailable

logger = logging.getLogger(__name__)


#: Longest pause between two renewals (the check that the lock is still ours), whatever the lease.
#: It bounds how late a holder learns that a memcached restart or eviction took its lock.
#: How often a lease is renewed below that is the lease's own arithmetic (``Lease.renew_period``).
MAX_CHECK_PERIOD = 2.0


class Renewable(Protocol):
    """What the renewer uses of a lease (``lease.Lease``, which imports this module)."""

    name: str
    ttl: float
    #: The lease's current schedule entry (see ``Renewer.register``).
    renew_seq: int
    renew_until: float | None

    @property
    def held(self) -> bool:
        """True while this process still holds the lease."""

    def renew_period(self, ttl: float) -> float:
        """Seconds between two renewals of a lease of ``ttl`` seconds."""

    def renew(self, ttl: float | None = None) -> bool:
        """Extend the lease if still ours."""

    def release(self) -> bool:
        """Give the lock back if still ours."""


#: A schedule entry: (when it is due, its sequence number, the lease).
_Entry = tuple[float, int, weakref.ref[Renewable]]


class Renewer:
    """Renews registered leases shortly before they could expire.

    Each lease has one current schedule entry, named by ``lease.renew_seq``:
    registering a lease again (its lease time changed) supersedes the entry
    it had, which is then dropped when it comes due.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._wake_at = float("inf")
        self._compact_at = 4096

    def _compact(self) -> None:
        """Drop entries of released leases, so short holds do not pile up until due."""
        self._heap = [entry for entry in self._heap if _current(entry)]
        heapq.heapify(self._heap)
        self._compact_at = max(4096, 2 * len(self._heap))

    def register(self, lease: Renewable) -> None:
        """Renew ``lease`` every ``lease.renew_period(lease.ttl)`` seconds while it is held.

        Called again when the lease time changed (a lease handed to a lock with
        a shorter one): the schedule starts afresh from the new period.
        """
        due = time.monotonic() + lease.renew_period(lease.ttl)
        with self._cond:
            self._push(lease, due)
            if len(self._heap) >= self._compact_at:
                self._compact()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="memcachedlock-renewer", daemon=True
                )
                self._thread.start()
            elif due < self._wake_at:
                self._cond.notify()

    def _push(self, lease: Renewable, due: float) -> None:
        """Schedule ``lease``'s next renewal at ``due``, superseding its entry (caller holds ``_cond``)."""
        seq = next(self._seq)
        lease.renew_seq = seq
        heapq.heappush(self._heap, (due, seq, weakref.ref(lease)))

    def pending(self) -> int:
        """Leases waiting for their next renewal (for tests and metrics)."""
        with self._cond:
            return sum(1 for entry in self._heap if _current(entry))

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    while self._heap and self._heap[0][2]() is None:
                        heapq.heappop(self._heap)
                    if self._heap and self._heap[0][0] <= now:
                        _, seq, ref = heapq.heappop(self._heap)
                        break
                    self._wake_at = self._heap[0][0] if self._heap else float("inf")
                    self._cond.wait(None if not self._heap else self._wake_at - now)
                self._wake_at = float("inf")
            lease = ref()
            if lease is None or not lease.held or lease.renew_seq != seq:
                continue
            self._renew(lease, seq)
            del lease

    def _renew(self, lease: Renewable, seq: int) -> None:
        """Renew ``lease`` (its entry ``seq`` came due) and schedule the next renewal,
        unless the lease was registered again meanwhile."""
        period = lease.renew_period(lease.ttl)
        until = lease.renew_until
        if until is not None and time.monotonic() >= until:
            logger.debug("lease %s ran out unclaimed (renew_until): released", lease.name)
            lease.release()
            return
        try:
            if not lease.renew():
                return
            logger.debug("renewed lock %s for %.1fs", lease.name, lease.ttl)
        except BackendUnavailable as exc:
            logger.debug("could not renew lock %s now: %s", lease.name, exc)
            period = min(period, 1.0)
        except Exception:
            logger.exception("renewing lock %s failed", lease.name)
            period = min(period, 1.0)
        if lease.held:
            due = time.monotonic() + period
            if lease.renew_until is not None:
                due = min(due, lease.renew_until)
            with self._cond:
                if lease.renew_seq == seq:
                    self._push(lease, due)


def _current(entry: _Entry) -> bool:
    """True if the schedule entry still stands: its lease is held and was not registered again since."""
    lease = entry[2]()
    return lease is not None and lease.held and lease.renew_seq == entry[1]


_renewer: Renewer | None = None
_renewer_lock = threading.Lock()


def get_renewer() -> Renewer:
    """The process's renewer (started on first use)."""
    global _renewer
    if _renewer is None:
        with _renewer_lock:
            if _renewer is None:
                _renewer = Renewer()
    return _renewer


def _after_fork_in_child() -> None:
    global _renewer, _renewer_lock
    _renewer = None
    _renewer_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
