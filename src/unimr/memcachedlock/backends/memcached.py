"""The memcached lock store, on pymemcache.

Safety rests on three memcached facts (docs/stores.rst): ``add`` is atomic, so
exactly one of several writers takes a free key; ``gets`` followed by ``cas``
with exptime -1 deletes (or renews) an item only if nobody changed it in
between; and the stored value carries our random token, so a release after
the lease expired, or after a server restart reset the cas counter, finds a
different token and leaves the new holder's lock alone.

An ``add`` whose answer never came (a read timeout: the server is slow, hung
or the answer was delayed) may or may not have stored the lock.  That
unknown outcome is resolved by reading the key, never by deleting: our token
means the lock is ours; another token means it is not; no item means the
add did not land, and it is sent again (a bounded number of times).  If the
server cannot tell, the attempt's token is given to the reaper, which removes
the item if it carries that token (nobody holds it: the caller was told the
store is unavailable).

With several servers each lock name maps to one server by rendezvous hashing
over the configured list.  A dead server is never replaced by another one
for its keys: moving a key would let two holders in.  Its keys raise
BackendUnavailable, which the fallback store turns into file locks.

The store's parts have modules of their own: ``memcachedserver`` (a server,
its outage state, compare-and-delete), ``memcachedlease`` (an acquisition),
``memcachedboard`` (the waiter announcements) and ``memcachedgate`` (the
commit gate).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import socket
import ssl
import time
from collections.abc import Iterable

from ..config import ServerAddress, Settings
from ..errors import BackendUnavailable
from ..lease import Lease, abandon
from .base import Backend, Warn
from .memcachedboard import MemcachedWaiterBoard
from .memcachedgate import GATE_SUFFIX, MemcachedCommitGate
from .memcachedlease import WANT_SUFFIX, MemcachedLease, Orphan
from .memcachedserver import MemcachedServer, carries_token, compare_and_delete, metadump_keys, server_command
from .pool import ClientPool, Connection, Write
from .records import Holder, decode_value, encode_value, new_token

logger = logging.getLogger(__name__)

NOTE_SUFFIX = "#note"
#: Seconds a note outlives the last commit that wrote it: at most the ``-o temporary_ttl=3600`` docs/stores.rst
#: recommends, so that such a server never evicts one (zlock reads a missing note as "unknown", never as "none").
NOTE_TTL = 3600
#: Reads (and re-sends of the add) to resolve an add whose answer timed out.
UNKNOWN_ADD_TRIES = 3


def _outcome_unknown(exc: BackendUnavailable) -> bool:
    """True if the failed request may have been carried out (no answer within the timeout)."""
    return isinstance(exc.__cause__, socket.timeout)


class MemcachedBackend(Backend):
    """Locks in one or several memcached servers, with their waiter board and commit gate beside them."""

    kind = "memcached"
    #: See ``base.CAPABILITIES``: all but the fallback store's own.
    capabilities = frozenset(("commit_gate", "notes", "waiter_board", "note_with_acquire", "note_with_release",
                              "expiring_leases", "multi_host"))
    commit_gate: MemcachedCommitGate

    def __init__(
        self,
        servers: Iterable[ServerAddress],
        prefix: str = "memcachedlock:",
        connect_timeout: float = 0.5,
        io_timeout: float = 1.0,
        retry: float = 2.0,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.servers = [MemcachedServer(a, connect_timeout, io_timeout, retry, tls_context) for a in servers]
        if not self.servers:
            raise ValueError("MemcachedBackend needs at least one server")
        self.prefix = prefix
        self._hash_ids = [str(s).encode("utf-8") for s in self.servers]
        self.commit_gate = MemcachedCommitGate(self, NOTE_SUFFIX, NOTE_TTL)
        self._board = MemcachedWaiterBoard(self)

    @classmethod
    def from_settings(cls, settings: Settings) -> MemcachedBackend:
        return cls(
            settings.servers,
            prefix=settings.prefix,
            connect_timeout=settings.connect_timeout,
            io_timeout=settings.io_timeout,
            retry=settings.retry,
            tls_context=settings.tls_context,
        )

    def __repr__(self) -> str:
        return "<MemcachedBackend %s>" % ",".join(str(s) for s in self.servers)

    def server_for(self, name: str) -> MemcachedServer:
        """The server that holds ``name``: fixed by rendezvous hash, never remapped."""
        if len(self.servers) == 1:
            return self.servers[0]
        data = name.encode("ascii")
        best = max(
            range(len(self.servers)),
            key=lambda i: hashlib.blake2b(self._hash_ids[i] + b"\0" + data, digest_size=8).digest(),
        )
        return self.servers[best]

    def acquire(self, name: str, ttl: float, with_note: bool = False) -> MemcachedLease | None:
        """One ``add``; a lease if it stored the lock, None if somebody holds it.

        From the moment the add is sent until the lease exists, an interrupt
        gives the attempt's token to the reaper (the add may have landed).
        """
        server = self.server_for(name)
        key = self.prefix + name
        token = new_token()
        value = encode_value(token, ttl)
        expire = MemcachedLease.store_ttl(ttl)
        sent = time.monotonic()
        lease: MemcachedLease | None = None
        read: tuple[bytes | None, bytes | None] | None = None
        try:
            try:
                if with_note:
                    stored, cas, connection, others = server.call(
                        ClientPool.add_keeping_cas_and_read, key, value, expire, key + GATE_SUFFIX,
                        key + NOTE_SUFFIX)
                    read = (others[0], others[1])
                else:
                    stored, cas, connection = server.call(ClientPool.add_keeping_cas, key, value, expire)
            except BackendUnavailable as exc:
                if not _outcome_unknown(exc):
                    raise
                stored, cas, connection = _resolve_unknown_add(server, key, value, token, ttl, exc)
            if not stored:
                return None
            lease = MemcachedLease(self, server, key, name, token, value, ttl, cas, connection, sent, read)
        except BackendUnavailable:
            raise
        except BaseException:
            if lease is None:
                abandon(Orphan(server, key, token))
            raise
        return lease

    def holder(self, name: str, warn: Warn | None = None) -> Holder | None:
        value = self.server_for(name).call(ClientPool.get, self.prefix + name)
        return decode_value(name, value, self.kind) if value else None

    def may_be_available(self, name: str) -> bool:
        return self.server_for(name).call(ClientPool.get, self.prefix + name) is None

    def break_lock(self, name: str, token: str | None = None) -> bool:
        """Remove ``name``'s item; with ``token`` only while it carries that token (compare-and-delete)."""
        server = self.server_for(name)
        if token is None:
            return bool(server.call(ClientPool.delete, self.prefix + name, noreply=False))
        return compare_and_delete(server, self.prefix + name, functools.partial(carries_token, token=token))

    @property
    def waiter_board(self) -> MemcachedWaiterBoard:
        """The waiter announcements of this store's locks."""
        return self._board

    def defer_note(self, lease: Lease, value: bytes) -> bool:
        """Store ``value`` as the note of ``lease``'s lock in front of its release (or hand-over): one round trip less.

        Stored before the lock is freed, as by ``set_note``: in the release's request when its cas proves
        the lock still ours, else in a request of its own just before.  False (store it now yourself) for
        a lease of another store."""
        if not isinstance(lease, MemcachedLease) or lease.backend is not self:
            return False
        lease.note_write = Write(self.prefix + lease.name + NOTE_SUFFIX, value, NOTE_TTL)
        return True

    def note_read_at_acquire(self, lease: Lease) -> tuple[bool, bytes | None]:
        """(True, the note) if the ``add`` that took ``lease`` found no optimistic commit passing, else (False, None).

        Spares a new holder the round trip of ``commit_gate.drain``: the
        ``add`` read the counter and the note after it stored the lock, so no
        commit entered the gate since.  Not when the counter and the note
        were both missing (the server may have restarted: ``drain`` decides),
        nor for a lease handed over by another thread, nor for a lease of another store.
        """
        if not isinstance(lease, MemcachedLease) or lease.backend is not self:
            return False, None
        read = lease.take_read_at_acquire()
        if read is None or read == (None, None) or (read[0] is not None and int(read[0]) > 0):
            return False, None
        return True, read[1]

    def get_note(self, name: str) -> bytes | None:
        note: bytes | None = self.server_for(name).call(ClientPool.get, self.prefix + name + NOTE_SUFFIX)
        return note

    def set_note(self, name: str, value: bytes) -> None:
        self.server_for(name).call(ClientPool.set, self.prefix + name + NOTE_SUFFIX, value, expire=NOTE_TTL,
                                   noreply=False)

    def remove_note(self, name: str) -> None:
        self.server_for(name).call(ClientPool.delete, self.prefix + name + NOTE_SUFFIX, noreply=False)

    def list_locks(self, warn: Warn | None = None) -> list[Holder]:
        """Every lock in every reachable server (``lru_crawler metadump``)."""
        holders = [holder for server in self.servers for holder in _locks_in(server, self.prefix, self.kind)]
        holders.sort(key=lambda h: h.acquired)
        return holders

    def close(self) -> None:
        for server in self.servers:
            try:
                server.client.close()
            except Exception:
                logger.debug("closing client for %s failed", server, exc_info=True)


def _locks_in(server: MemcachedServer, prefix: str, kind: str) -> list[Holder]:
    """The locks (keys starting with ``prefix``) in one server, read with ``lru_crawler metadump``."""
    keys = [
        k for k in metadump_keys(server.address, tls_context=server.tls_context)
        if k.startswith(prefix) and not k.endswith((NOTE_SUFFIX, WANT_SUFFIX, GATE_SUFFIX))
    ]
    holders: list[Holder] = []
    for start in range(0, len(keys), 100):
        values = server.call(ClientPool.get_many, keys[start : start + 100])
        for key, value in values.items():
            key = key.decode() if isinstance(key, bytes) else key
            holder = decode_value(key[len(prefix):], value, kind)
            if holder is not None:
                holders.append(holder)
    return holders


def _resolve_unknown_add(server: MemcachedServer, key: str, value: bytes, token: str, ttl: float,
                        failure: BackendUnavailable) -> tuple[bool, bytes | None, Connection | None]:
    """Find out whether an add whose answer timed out stored the lock: (stored, cas, connection).

    Reads the key: our token means stored (ours), another token means not
    stored; no item means the add did not land (yet), so it is sent again
    with the same token (a late first add then finds the key taken).  Raises
    ``failure`` if a read fails or UNKNOWN_ADD_TRIES attempts do not tell;
    the token then goes to the reaper, which removes the item if it landed.
    """
    for _ in range(UNKNOWN_ADD_TRIES):
        try:
            stored = server.call_now(ClientPool.get, key)
        except BackendUnavailable:
            break  # hung or gone: one read is all a hung server costs
        if stored is not None:
            return carries_token(stored, token), None, None
        try:
            added, cas, connection = server.call_now(ClientPool.add_keeping_cas, key, value,
                                                     MemcachedLease.store_ttl(ttl))
        except BackendUnavailable as exc:
            if not _outcome_unknown(exc):
                break
            continue
        if added:
            return True, cas, connection
    abandon(Orphan(server, key, token))
    raise failure



__all__ = ["MemcachedBackend", "MemcachedLease", "MemcachedServer", "NOTE_SUFFIX", "NOTE_TTL", "WANT_SUFFIX",
           "carries_token", "metadump_keys", "server_command"]
