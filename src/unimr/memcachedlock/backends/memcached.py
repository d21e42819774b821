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
"""

from __future__ import annotations

import collections
import hashlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Concatenate, Literal, ParamSpec, TypeVar
from urllib.parse import unquote

from pymemcache.exceptions import MemcacheError, MemcacheUnexpectedCloseError
from zope.interface import implementer

from ..config import ServerAddress, Settings
from ..errors import BackendUnavailable
from ..interfaces import IWaiterBoard
from ..lease import Lease, abandon, shortest_life, store_ttl
from .base import Backend
from .memcachedgate import GATE_SUFFIX, MemcachedCommitGate
from .pool import ClientPool, Connection, Write
from .records import MAGIC, WANT_TTL, Holder, Want, decode_value, encode_value, new_token, renewed_value

logger = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")

NOTE_SUFFIX = "#note"
#: A waiting process's announcement (see ``waiting``): read by a release in the same round trip.
WANT_SUFFIX = "#want"
#: Seconds a note outlives the last commit that wrote it: at most the ``-o temporary_ttl=3600`` docs/stores.rst
#: recommends, so that such a server never evicts one (zlock reads a missing note as "unknown", never as "none").
NOTE_TTL = 3600
#: Reads (and re-sends of the add) to resolve an add whose answer timed out.
UNKNOWN_ADD_TRIES = 3
#: Seconds after which the reaper looks again for an item an abandoned add may still store.
ORPHAN_RECHECKS = (0.1, 1.0)


class MemcachedServer:
    """One server: its pooled client and its outage state.

    While a server is down, calls fail at once for ``retry`` seconds instead of
    waiting for a timeout each time; the outage is logged once, and so is the
    recovery.  Locks whose release could not reach the server are kept and
    removed (token compared) when it answers again.
    """

    def __init__(self, address: ServerAddress, connect_timeout: float, io_timeout: float, retry: float) -> None:
        self.address = address
        self.retry = retry
        self.client = ClientPool(
            address.pymemcache_server,
            connect_timeout=connect_timeout,
            timeout=io_timeout,
            no_delay=True,
            default_noreply=False,
        )
        self._state_lock = threading.Lock()
        self.down_since: float | None = None
        self.down_until = 0.0
        self.last_error = ""
        self._unreleased: collections.deque[tuple[str, str]] = collections.deque(maxlen=1000)
        #: What an outage means for the locks, in its one warning (a fallback store says what takes over).
        self.while_down = "its locks are unavailable until it answers again"

    def __str__(self) -> str:
        return str(self.address)

    @property
    def is_down(self) -> bool:
        return self.down_since is not None

    def call(self, method: Callable[Concatenate[ClientPool, P], T], *args: P.args, **kw: P.kwargs) -> T:
        """``method(pool, *args, **kw)`` (a ClientPool method); wrap its failures in BackendUnavailable.

        Fails at once while the server counts as down (see ``retry``).
        """
        if self.down_until and time.monotonic() < self.down_until:
            raise BackendUnavailable(
                "memcached %s is unreachable (%s); next try in %.1fs"
                % (self, self.last_error, self.down_until - time.monotonic())
            )
        return self.call_now(method, *args, **kw)

    def call_now(self, method: Callable[Concatenate[ClientPool, P], T], *args: P.args, **kw: P.kwargs) -> T:
        """``call``, even while the server counts as down (to resolve an unknown outcome)."""
        try:
            try:
                result = method(self.client, *args, **kw)
            except _STALE_CONNECTION:
                # A pooled connection to a server that restarted since: so are the
                # pool's other idle ones.  One more try on a fresh connection.
                self.client.close()
                result = method(self.client, *args, **kw)
        except (MemcacheError, OSError) as exc:
            self._failed(exc)
            raise BackendUnavailable("memcached %s: %s" % (self, _describe(exc))) from exc
        if self.down_since is not None:
            self._recovered()
        return result

    def remember_unreleased(self, key: str, token: str) -> None:
        """Remove ``key`` if it carries ``token`` once the server answers again.

        Only for tokens nobody here holds: a release that could not reach the
        server, or an acquisition whose outcome stayed unknown.
        """
        self._unreleased.append((key, token))

    def _failed(self, exc: BaseException) -> None:
        with self._state_lock:
            self.last_error = _describe(exc)
            self.down_until = time.monotonic() + self.retry
            first = self.down_since is None
            if first:
                self.down_since = time.time()
        if first:
            logger.warning("memcached %s unreachable (%s): %s", self, self.last_error, self.while_down)

    def _recovered(self) -> None:
        with self._state_lock:
            if self.down_since is None:
                return
            outage = time.time() - self.down_since
            self.down_since = None
            self.down_until = 0.0
            pending = list(self._unreleased)
            self._unreleased.clear()
        logger.info("memcached %s answers again after %.1fs", self, outage)
        for key, token in pending:
            try:
                _compare_and_delete(self, key, token)
            except BackendUnavailable:
                break


#: Errors of a pooled connection whose server went away (and maybe came back).
_STALE_CONNECTION = (MemcacheUnexpectedCloseError, BrokenPipeError, ConnectionResetError)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return "%s: %s" % (type(exc).__name__, text) if text else type(exc).__name__


def carries_token(stored: bytes | None, token: str) -> bool:
    """True if a stored lock value was written by the acquisition with ``token``.

    Renewals and handovers rewrite the value but keep the token, and a token
    is never reused, so this names one acquisition exactly.
    """
    return stored is not None and stored.startswith(b"%s %s " % (MAGIC, token.encode("ascii")))


def _compare_and_delete(server: MemcachedServer, key: str, token: str) -> bool:
    found = server.call(ClientPool.gets_values, key).get(key)
    if found is None or not carries_token(found[0], token):
        return False
    stored, cas = found
    return bool(server.call(ClientPool.cas_value, key, stored, cas, -1))


class _Orphan:
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
            if _compare_and_delete(self.server, self.key, self.token):
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


def _outcome_unknown(exc: BackendUnavailable) -> bool:
    """True if the failed request may have been carried out (no answer within the timeout)."""
    return isinstance(exc.__cause__, socket.timeout)


class MemcachedLease(Lease):
    """An acquisition in memcached: ``key`` holds ``value``, which starts with our token.

    After the release, ``successor`` holds the waiter announcement that was
    stored next to the lock (read in the release's ``gets``), or None.
    ``read_at_acquire`` holds the commit gate's counter and the note as the
    ``add`` that took the lock left them (read in its round trip), until the
    lease serves another thread; None when unknown.  ``note_write`` is a note
    to store in front of the release or hand-over (``MemcachedBackend.defer_note``).
    """

    __slots__ = ("server", "key", "successor", "cas", "connection", "read_at_acquire", "note_write")

    expiring = True

    def __init__(self, backend: MemcachedBackend, server: MemcachedServer, key: str, name: str, token: str,
                 value: bytes, ttl: float, cas: bytes | None = None, connection: Connection | None = None,
                 sent: float | None = None) -> None:
        self.server = server
        self.key = key
        self.successor: bytes | None = None
        self.cas = cas
        self.connection = connection
        self.read_at_acquire: tuple[bytes | None, bytes | None] | None = None
        self.note_write: Write | None = None
        super().__init__(backend, name, token, value, ttl, sent)

    def handed_to(self, ttl: float) -> bool:
        self.read_at_acquire = None  # the holder that hands it over may have changed the note since
        return super().handed_to(ttl)

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
            mine = found.get(key)
            want = found.get(key + WANT_SUFFIX)
            if want is not None:
                self.successor = want[0]
            if mine is None or not carries_token(mine[0], self.token):
                self.note_write = None  # the lock is no longer ours: a newer holder's note must stay
                return False
            stored, cas = mine
            self._write_note_now()
            return bool(self.server.call(ClientPool.cas_value, key, stored, cas, -1))
        except BackendUnavailable:
            self.server.remember_unreleased(key, self.token)
            logger.debug("release of %s deferred until memcached %s answers", self.name, self.server)
            return None

    def _note_written(self) -> None:
        """The request that carried ``note_write`` went through: say so if the server refused the note."""
        write, self.note_write = self.note_write, None
        if write is not None and not write.stored:
            logger.warning("memcached %s did not store the note of lock %s: the next holder asks the storage "
                           "instead", self.server, self.name)

    def _write_note_now(self) -> None:
        """Store ``note_write`` in a request of its own (it could not ride on the release), the lock being ours."""
        write, self.note_write = self.note_write, None
        if write is not None:
            self.server.call(ClientPool.set, write.key, write.value, expire=write.expire, noreply=False)

    def _renew(self, ttl: float) -> bool:
        found = self.server.call(ClientPool.gets_values, self.key).get(self.key)
        if found is None or not carries_token(found[0], self.token):
            return False
        stored, cas = found
        value = renewed_value(stored, ttl)
        self.cas = self.connection = None
        if self.server.call(ClientPool.cas_value, self.key, value, cas, store_ttl(ttl)):
            self.value = value
            return True
        return False


@implementer(IWaiterBoard)
class MemcachedBackend(Backend):
    """Locks in one or several memcached servers."""

    kind = "memcached"
    commit_gate: MemcachedCommitGate

    def __init__(
        self,
        servers: Iterable[ServerAddress],
        prefix: str = "memcachedlock:",
        connect_timeout: float = 0.5,
        io_timeout: float = 1.0,
        retry: float = 2.0,
    ) -> None:
        self.servers = [MemcachedServer(a, connect_timeout, io_timeout, retry) for a in servers]
        if not self.servers:
            raise ValueError("MemcachedBackend needs at least one server")
        self.prefix = prefix
        self._hash_ids = [str(s).encode("utf-8") for s in self.servers]
        self.commit_gate = MemcachedCommitGate(self, NOTE_SUFFIX, NOTE_TTL)

    @classmethod
    def from_settings(cls, settings: Settings) -> MemcachedBackend:
        return cls(
            settings.servers,
            prefix=settings.prefix,
            connect_timeout=settings.connect_timeout,
            io_timeout=settings.io_timeout,
            retry=settings.retry,
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
        sent = time.monotonic()
        lease: MemcachedLease | None = None
        read: tuple[bytes | None, bytes | None] | None = None
        try:
            try:
                if with_note:
                    stored, cas, connection, others = server.call(
                        ClientPool.add_keeping_cas_and_read, key, value, store_ttl(ttl), key + GATE_SUFFIX,
                        key + NOTE_SUFFIX)
                    read = (others[0], others[1])
                else:
                    stored, cas, connection = server.call(ClientPool.add_keeping_cas, key, value, store_ttl(ttl))
            except BackendUnavailable as exc:
                if not _outcome_unknown(exc):
                    raise
                stored, cas, connection = _resolve_unknown_add(server, key, value, token, ttl, exc)
            if not stored:
                return None
            lease = MemcachedLease(self, server, key, name, token, value, ttl, cas, connection, sent)
            lease.read_at_acquire = read
        except BackendUnavailable:
            raise
        except BaseException:
            if lease is None:
                abandon(_Orphan(server, key, token))
            raise
        return lease

    def holder(self, name: str) -> Holder | None:
        value = self.server_for(name).call(ClientPool.get, self.prefix + name)
        return decode_value(name, value, self.kind) if value else None

    def may_be_available(self, name: str) -> bool:
        return self.server_for(name).call(ClientPool.get, self.prefix + name) is None

    def break_lock(self, name: str) -> bool:
        return bool(self.server_for(name).call(ClientPool.delete, self.prefix + name, noreply=False))

    @property
    def waiter_board(self) -> MemcachedBackend:
        """This store keeps the waiter announcements itself."""
        return self

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
        or None), or False when the record could not be rewritten that way
        (also for a lease of another store: ``waiting.hand_over`` passes only this store's).
        """
        if not isinstance(lease, MemcachedLease):
            return False
        value = encode_value(lease.token, ttl, thread=thread)
        key = lease.key
        with lease._guard:  # not while a renewal rewrites the record
            if lease.cas is None or lease.connection is None or not lease.held:
                return False
            sent = time.monotonic()
            answer = lease.server.call(
                ClientPool.replace_if_unchanged, lease.connection, key, value, lease.cas, store_ttl(ttl),
                key + WANT_SUFFIX, lease.note_write,
            )
            if answer is None:
                return False
            lease._note_written()
            lease.value, lease.cas, lease.ttl, lease.deadline = value, answer[0], ttl, sent + shortest_life(ttl)
        return Want.decode(answer[1]) if answer[1] else None

    def put_want(self, name: str, value: bytes, cas: bytes | None, add: bool) -> bool:
        """Store a waiter announcement: ``add`` it, or replace the one read with ``cas``."""
        server = self.server_for(name)
        key = self.prefix + name + WANT_SUFFIX
        if add:
            return bool(server.call(ClientPool.add, key, value, expire=WANT_TTL, noreply=False))
        return bool(server.call(ClientPool.cas, key, value, cas, expire=WANT_TTL, noreply=False))

    def drop_want(self, name: str, token: str) -> bool:
        """Remove the announcement if it is still ``token``'s (another waiter may have taken the slot)."""
        server = self.server_for(name)
        key = self.prefix + name + WANT_SUFFIX
        stored, cas = server.call(ClientPool.gets, key)
        want = Want.decode(stored)
        if want is None or want.token != token:
            return False
        return bool(server.call(ClientPool.cas, key, stored, cas, expire=-1, noreply=False))

    def defer_note(self, lease: Lease, value: bytes) -> bool:
        """Store ``value`` as the note of ``lease``'s lock in front of its release (or hand-over): one round trip less.

        Stored before the lock is freed, as by ``set_note``: in the release's request when its cas proves
        the lock still ours, else in a request of its own just before.  False (store it now yourself) for
        a lease of another store (zlock asks only for this store's)."""
        if not isinstance(lease, MemcachedLease):
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
        if not isinstance(lease, MemcachedLease):
            return False, None
        read, lease.read_at_acquire = lease.read_at_acquire, None
        if read is None or read == (None, None) or (read[0] is not None and int(read[0]) > 0):
            return False, None
        return True, read[1]

    def get_note(self, name: str) -> bytes | None:
        note: bytes | None = self.server_for(name).call(ClientPool.get, self.prefix + name + NOTE_SUFFIX)
        return note

    def set_note(self, name: str, value: bytes) -> None:
        self.server_for(name).call(ClientPool.set, self.prefix + name + NOTE_SUFFIX, value, expire=NOTE_TTL,
                                   noreply=False)

    def list_locks(self) -> list[Holder]:
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
        k for k in metadump_keys(server.address)
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
            added, cas, connection = server.call_now(ClientPool.add_keeping_cas, key, value, store_ttl(ttl))
        except BackendUnavailable as exc:
            if not _outcome_unknown(exc):
                break
            continue
        if added:
            return True, cas, connection
    abandon(_Orphan(server, key, token))
    raise failure


#: Answers that end a command's reply at their first line.
_ERROR_REPLIES = (b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR", b"BUSY")


def server_command(address: ServerAddress, command: bytes, timeout: float = 2.0) -> str:
    """Send one text command to a server over a fresh plain socket; return its whole answer.

    For what pymemcache cannot do whole (``raw_command`` returns only the
    first line and can drop bytes): ``stats``, ``stats settings``,
    ``lru_crawler metadump all``, ``version``.  ``stats`` and metadump answers
    are read up to ``END``, others one line.  Raises OSError (``socket.timeout``
    included) if the server cannot be reached or does not answer in time.
    """
    if address.path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: str | tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes] = address.path
    else:
        info = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        target = info[4]
    multi_line = command.startswith((b"stats", b"lru_crawler metadump"))
    with sock:
        sock.settimeout(timeout)
        sock.connect(target)
        sock.sendall(command + b"\r\n")
        data = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            if data.endswith(b"\r\n") and (
                not multi_line or data.endswith(b"END\r\n") or data.startswith(_ERROR_REPLIES)
            ):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("no complete answer to %r within %.1fs" % (command.decode(), timeout))
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.decode("ascii", "replace")


def metadump_keys(address: ServerAddress, timeout: float = 5.0) -> list[str]:
    """Keys a server holds, read with ``lru_crawler metadump all``.

    Raises BackendUnavailable if the server cannot be read or refuses (``-X``).
    """
    try:
        text = server_command(address, b"lru_crawler metadump all", timeout)
    except OSError as exc:
        raise BackendUnavailable("memcached %s: metadump failed: %s" % (address, _describe(exc))) from exc
    if not text.endswith("END\r\n"):
        raise BackendUnavailable("memcached %s refused metadump: %s" % (address, text.strip()[:200]))
    keys = []
    for line in text.splitlines():
        if line.startswith("key="):
            keys.append(unquote(line.split(" ", 1)[0][4:]))
    return keys
