"""Taking a zlock: what a call asks of the lock, the lock held for it, the bounded wait, the note read with it.

Every path that takes a zlock (at the call, at commit, when a transaction
begins) goes through :func:`take`: the full lease at once, a wait bounded
inside a transaction by :func:`txn_wait`, and the lock's note read once the
optimistic commits that passed its commit gate before have left.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Protocol

from .. import metrics
from ..config import DEFAULT_TXN_WAIT, get_settings
from ..errors import BackendUnavailable
from ..keys import shown
from ..lease import Lease
from ..locks import Lock
from ..options import DEFAULT_CONFLICTS
from . import notes
from .busy import LockBusy
from .private import Transaction

logger = logging.getLogger(__name__)

#: Longest wait of a new holder for the optimistic commits that passed the gate before it.
DRAIN_WAIT = 2.0


@dataclasses.dataclass(eq=False)
class Request:
    """What a call asks of a lock: taken now, at commit (``on-conflict``), or, marked (``until``), at begin."""

    key: str | bytes | int
    timeout: float
    interval: float
    wait: float
    conflicts: int = DEFAULT_CONFLICTS
    until: float = 0.0
    #: Asked with policy adaptive: what its transactions meet is recorded (``adaptive.record``).
    adaptive: bool = False


class EntryPolicy(Protocol):
    """What the hooks of a held lock ask of the policy it was taken with (a :class:`.policy.Policy`)."""

    @property
    def exclusive(self) -> bool:
        """True if a commit made under the lock is recorded as exclusive (it may have replaced objects)."""

    @property
    def adopts_at_begin(self) -> bool:
        """True if a reservation of the lock is adopted when the thread's next transaction begins."""

    def count_conflict(self, entry: Entry, txn: Transaction) -> None:
        """``txn``'s commit failed or it was aborted: count a ConflictError if that is why."""


@dataclasses.dataclass(eq=False)
class Entry:
    """One lock this thread holds (or has reserved) for a transaction, taken for ``request``."""

    request: Request
    lock: Lock
    lease: Lease
    note: dict[str, bytes]
    policy: EntryPolicy


def txn_wait() -> float:
    """Longest wait for a lock inside a transaction: ``MEMCACHEDLOCK_TXN_WAIT`` seconds (default 5)."""
    return get_settings().txn_wait


def _read_note(lock: Lock) -> dict[str, bytes]:
    """The note of a lock just taken, read once the optimistic commits that passed before have left."""
    backend = lock.backend
    lease = lock.lease
    if lease is not None:
        known, note = backend.note_read_at_acquire(lease)
        if known:
            return notes.decode_note(note)
    try:
        gate = backend.commit_gate
        if gate is not None:
            try:
                return notes.decode_note(gate.drain(lock.name, DRAIN_WAIT))
            except BackendUnavailable as exc:
                logger.debug("commit gate of lock %s not drained (%s)", lock.name, exc)
        return notes.decode_note(backend.get_note(lock.name))
    except BackendUnavailable as exc:
        logger.debug("cannot read the note of lock %s (%s): the storage is asked instead", lock.name, exc)
        return {}


def _busy(key: str | bytes | int, timeout: float, waited: float) -> LockBusy:
    return LockBusy(
        message="lock %s is busy: waited %.1fs inside a transaction (MEMCACHEDLOCK_TXN_WAIT) while another "
        "transaction holds it (lease %gs); retry" % (shown(key), waited, timeout),
        key=key,
    )


def _acquire(the_lock: Lock, key: str | bytes | int, timeout: float, wait: float,
             before_waiting: Callable[[], None] | None = None) -> None:
    """Acquire within ``min(wait, txn_wait())`` seconds, else LockBusy naming the configured lease.

    ``before_waiting`` is called once if the lock is busy at first, before the wait.
    """
    started = time.monotonic()
    limit = min(wait, txn_wait())
    if before_waiting is not None:
        if the_lock.acquire(blocking=False):
            return
        before_waiting()
        limit = max(0.0, limit - (time.monotonic() - started))
    if not the_lock.acquire(timeout=limit):
        metrics.record_timeout(the_lock.name)
        raise _busy(key, timeout, time.monotonic() - started)


def take(request: Request, policy: EntryPolicy, before_waiting: Callable[[], None] | None = None) -> Entry:
    """Acquire (bounded wait) with the full lease and read the lock's note: every path that takes a lock.

    The full lease at once, as at commit and at begin: a short lease promoted
    once the view is found fresh cost a renewal (two round trips) and made the
    release take two more (a renewal drops the acquisition's cas).  A process
    that dies holding a reservation thus leaves the lock for the lease, as one
    that dies inside the function does.
    """
    the_lock = _NoteLock(request.key, request.timeout, request.interval)
    _acquire(the_lock, request.key, request.timeout, request.wait, before_waiting)
    try:
        note = _read_note(the_lock)
    except BaseException:
        the_lock.release()
        raise
    lease = the_lock.lease
    if lease is None:  # given back meanwhile by another thread (``release_all``): not held after all
        raise LockBusy(message="lock %s was released by another thread while it was being taken; retry"
                       % shown(request.key), key=request.key)
    return Entry(request, the_lock, lease, note, policy)


class _NoteLock(Lock):
    """zlock's lock: the store reads the note and the commit gate with the acquisition, where it can."""

    __slots__ = ()
    reads_note = True


__all__ = ["Request", "Entry", "EntryPolicy", "take", "txn_wait", "DEFAULT_TXN_WAIT", "DRAIN_WAIT"]
