"""The waiter board in memcached: one announcement per lock, under ``<lock>#want`` (see ``interfaces.IWaiterBoard``).

The head waiter of a process stores its ``records.Want`` next to the lock;
a release reads it in the same round trip (``MemcachedLease.successor``)
and wakes that waiter, and a hand-over to a thread of this process reads it
while it rewrites the lock's record.  Announcements live ``WANT_TTL``
seconds unless their waiter refreshes them.

The board is an object of its own beside the store's commit gate
(``MemcachedBackend.waiter_board``); the fallback store uses it while
memcached answers, and ``hand_record_over`` refuses a lease of any other store.
"""

from __future__ import annotations

import functools
import threading
from typing import Literal, Protocol

from zope.interface import implementer

from ..interfaces import IWaiterBoard
from ..lease import Lease
from .memcachedlease import WANT_SUFFIX, MemcachedLease
from .memcachedserver import MemcachedServer, compare_and_delete
from .pool import ClientPool
from .records import WANT_TTL, Want


class _Store(Protocol):
    """What the board uses of its memcached store."""

    prefix: str

    def server_for(self, name: str) -> MemcachedServer:
        """The server that holds lock ``name``."""


def _announced_by(stored: bytes, token: str) -> bool:
    """True if ``stored`` is the announcement of the waiter with ``token``."""
    want = Want.decode(stored)
    return want is not None and want.token == token


@implementer(IWaiterBoard)
class MemcachedWaiterBoard:
    """The waiter announcements of a memcached store, kept beside its locks."""

    def __init__(self, store: _Store) -> None:
        self.store = store

    @property
    def prefix(self) -> str:
        """The namespace of the store's keys."""
        return self.store.prefix

    def server_for(self, name: str) -> MemcachedServer:
        """The server that holds lock ``name`` (the store's)."""
        return self.store.server_for(name)

    def peek_want(self, name: str) -> tuple[bool, Want | None, bytes | None]:
        """One round trip: (is the lock held, the waiter announcement or None, its cas)."""
        key = self.prefix + name
        found = self.server_for(name).call(ClientPool.gets_many, (key, key + WANT_SUFFIX))
        want = found.get(key + WANT_SUFFIX)
        if want is None:
            return key in found, None, None
        return key in found, Want.decode(want[0]), want[1]

    def hand_record_over(self, lease: Lease, thread: threading.Thread, ttl: float) -> Want | Literal[False] | None:
        """Rewrite ``lease``'s record for ``thread`` and lease ``ttl``, reading the announcement.

        One round trip, only while the lease's cas is provably current (see
        ``ClientPool.delete_if_unchanged``).  Returns the announcement (a Want
        or None), or False when the record could not be rewritten that way,
        and for a lease of another store.
        """
        if not isinstance(lease, MemcachedLease) or lease.backend is not self.store:
            return False
        stored = lease.rewrite_record(thread, ttl)
        if stored is False:
            return False
        return Want.decode(stored) if stored else None

    def put_want(self, name: str, value: bytes, cas: bytes | None, add: bool) -> bool:
        """Store a waiter announcement: ``add`` it, or replace the one read with ``cas``."""
        server = self.server_for(name)
        key = self.prefix + name + WANT_SUFFIX
        if add:
            return bool(server.call(ClientPool.add, key, value, expire=WANT_TTL, noreply=False))
        return bool(server.call(ClientPool.cas, key, value, cas, expire=WANT_TTL, noreply=False))

    def drop_want(self, name: str, token: str) -> bool:
        """Remove the announcement if it is still ``token``'s (another waiter may have taken the slot)."""
        return compare_and_delete(self.server_for(name), self.prefix + name + WANT_SUFFIX,
                                  functools.partial(_announced_by, token=token))
