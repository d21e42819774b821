"""An acquisition in memcached, and the item an acquisition may have left without a lease.

A ``MemcachedLease`` owns its item: its release (one round trip over the
connection that stored it, else ``gets`` and a compare-and-delete on the
token), its renewal (``gets`` and ``cas`` with the new expiry), the rewrite
of its record for another thread (``waiting.hand_over``) and the note it
stores in front of its release.  An ``Orphan`` is an item an interrupted or
unanswered ``add`` may have stored: the reaper removes it if it carries the
attempt's token.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Literal

from ..errors import BackendUnavailable
from ..lease import Lease, abandon
from .base import Backend
from .memcachedserver import MemcachedServer, carries_token, compare_and_delete
from .pool import ClientPool, Connection, Write
from .records import encode_value, renewed_value

logger = logging.getLogger(__name__)

#: A waiting process's announcement (see ``waiting``): read by a release in the same round trip.
WANT_SUFFIX = "#want"
#: Seconds after which the reaper looks again for an item an abandoned add may still store.
ORPHAN_RECHECKS = (0.1, 1.0)


class Orphan:
    """A lock item this process may have stored but holds no lease for (see ``lease.abandon``).

    The add that may have stored it can still be on its way (sent, then its
    connection closed by an interrupt or a timeout; the server carries it out
    later), so an item not found at once is looked for again after each of
    ORPHAN_RECHECKS seconds.
    """

    __slots__ = ("server", "key", "token", "rechecks")

    def __init__(self, server: MemcachedServer, key: str, token: str) -> None:
        self.server = server
        self.key = key
        self.token = token
        self.rechecks: tuple[float, ...] = ORPHAN_RECHECKS

    def _reap(self) -> None:
        try:
            if compare_and_delete(self.server, self.key, functools.partial(carries_token, token=self.token)):
                return
        except BackendUnavailable:
            self.server.remember_unreleased(self.key, self.token)
            return
        if self.rechecks:
            delay, self.rechecks = self.rechecks[0], self.rechecks[1:]
            timer = threading.Timer(delay, abandon, (self,))
            timer.daemon = True
            timer.start()

    def __repr__(self) -> str:
        return "<orphan %s token=%s>" % (self.key, self.token)


class MemcachedLease(Lease):
    """An acquisition in memcached: ``key`` holds ``value``, which starts with our token.

    After the release, ``successor`` holds the waiter announcement that was
    stored next to the lock (read in the release's ``gets``), or None.
    ``read_at_acquire`` holds the commit gate's counter and the note as the
    ``add`` that took the lock left them (read in its round trip), until the
    lease serves another thread; None when unknown.  ``note_write`` is a note
    to store in front of the release or hand-over (``MemcachedBackend.defer_note``);
    ``note_undelivered``, if set, is given its value when the server cannot be
    reached for it (the fallback store keeps it in the lock directory then).
    """

    __slots__ = ("server", "key", "successor", "cas", "connection", "read_at_acquire", "note_write",
                 "note_undelivered")

    expiring = True

    def __init__(self, backend: Backend, server: MemcachedServer, key: str, name: str, token: str,
                 value: bytes, ttl: float, cas: bytes | None = None, connection: Connection | None = None,
                 sent: float | None = None, read: tuple[bytes | None, bytes | None] | None = None) -> None:
        self.server = server
        self.key = key
        self.successor: bytes | None = None
        self.cas = cas
        self.connection = connection
        self.read_at_acquire = read
        self.note_write: Write | None = None
        self.note_undelivered: Callable[[bytes], None] | None = None
        super().__init__(backend, name, token, value, ttl, sent)

    def handed_to(self, ttl: float) -> bool:
        self.read_at_acquire = None  # the holder that hands it over may have changed the note since
        return super().handed_to(ttl)

    def take_read_at_acquire(self) -> tuple[bytes | None, bytes | None] | None:
        """The gate counter and note the acquiring ``add`` read (see ``read_at_acquire``), once: None after."""
        read, self.read_at_acquire = self.read_at_acquire, None
        return read

    def rewrite_record(self, thread: threading.Thread, ttl: float) -> bytes | None | Literal[False]:
        """Rewrite this lease's record for ``thread`` and lease ``ttl``, reading the waiter announcement.

        One round trip, only while the cas is provably current (see
        ``ClientPool.replace_if_unchanged``), with the deferred note in
        front.  Returns the stored announcement (or None), or False when the
        record could not be rewritten that way.
        """
        value = encode_value(self.token, ttl, thread=thread)
        key = self.key
        with self._guard:  # not while a renewal rewrites the record
            if self.cas is None or self.connection is None or not self.held:
                return False
            sent = time.monotonic()
            answer = self.server.call(
                ClientPool.replace_if_unchanged, self.connection, key, value, self.cas, self.store_ttl(ttl),
                key + WANT_SUFFIX, self.note_write,
            )
            if answer is None:
                return False
            self._note_written()
            self.value, self.cas, self.ttl, self.deadline = value, answer[0], ttl, sent + self.shortest_life(ttl)
        return answer[1]

    def _release(self) -> bool | None:
        key = self.key
        try:
            if self.cas is not None and self.connection is not None:
                # One round trip when the connection that stored the lock proves
                # the server has not restarted; otherwise compare the token.
                done = self.server.call(
                    ClientPool.delete_if_unchanged, self.connection, key, self.cas, key + WANT_SUFFIX,
                    self.note_write,
                )
                self.cas = self.connection = None
                if done is not None:
                    self._note_written()
                    self.successor = done[1]
                    return True
            found = self.server.call(ClientPool.gets_values, key, key + WANT_SUFFIX)
            want = found.get(key + WANT_SUFFIX)
            if want is not None:
                self.successor = want[0]
            deleted = compare_and_delete(self.server, key, functools.partial(carries_token, token=self.token),
                                         found.get(key), before_delete=self._write_note_now)
            # The note went in front of the delete; or the lock is no longer ours: a newer holder's note must stay.
            self.note_write = None
            return deleted
        except BackendUnavailable:
            self.server.remember_unreleased(key, self.token)
            logger.debug("release of %s deferred until memcached %s answers", self.name, self.server)
            self._note_not_delivered()
            return None

    def _note_written(self) -> None:
        """The request that carried ``note_write`` went through: say so if the server refused the note."""
        write, self.note_write = self.note_write, None
        if write is not None and not write.stored:
            logger.warning("memcached %s did not store the note of lock %s: the next holder asks the storage "
                           "instead", self.server, self.name)

    def _write_note_now(self) -> None:
        """Store ``note_write`` in a request of its own (it could not ride on the release), the lock being ours."""
        write = self.note_write
        if write is not None:
            self.server.call(ClientPool.set, write.key, write.value, expire=write.expire, noreply=False)
            self.note_write = None

    def _note_not_delivered(self) -> None:
        """The server could not be reached for the release that was to carry ``note_write``: pass it on."""
        write, self.note_write = self.note_write, None
        if write is None:
            return
        if self.note_undelivered is None:
            logger.debug("the note of lock %s could not be stored (memcached %s unreachable): the next holder "
                         "asks the storage or meets a ConflictError", self.name, self.server)
            return
        self.note_undelivered(write.value)

    def _renew(self, ttl: float) -> bool:
        found = self.server.call(ClientPool.gets_values, self.key).get(self.key)
        if found is None or not carries_token(found[0], self.token):
            return False
        stored, cas = found
        value = renewed_value(stored, ttl)
        self.cas = self.connection = None
        if self.server.call(ClientPool.cas_value, self.key, value, cas, self.store_ttl(ttl)):
            self.value = value
            return True
        return False
