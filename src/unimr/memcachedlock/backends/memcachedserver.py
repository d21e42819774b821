"""One memcached server of the lock store: its pooled client, its outage state, and plain commands.

``MemcachedServer`` wraps every request so that a server that refuses,
times out or hangs raises BackendUnavailable (and then fails fast for
``retry`` seconds); ``compare_and_delete`` is the store's one way of
removing an item only if it is still the one a caller means.
``server_command`` and ``metadump_keys`` speak the text protocol for what
pymemcache cannot do whole (``stats``, ``lru_crawler metadump``).  With a
TLS context (``MEMCACHEDLOCK_TLS_CA``) every connection, pooled or not, is
made through it, and a failure names the server with "(TLS)" and says what
the handshake met (see :mod:`..tls`).
"""

from __future__ import annotations

import collections
import enum
import functools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Concatenate, Final, Literal, ParamSpec, TypeVar
from urllib.parse import unquote

from pymemcache.exceptions import MemcacheError, MemcacheUnexpectedCloseError

from ..config import ServerAddress
from ..errors import BackendUnavailable, ConfigurationError, describe
from ..tls import TLSFailure, describe_failure, label, wrap
from .pool import ClientPool
from .records import MAGIC

logger = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")

class MemcachedServer:
    """One server: its pooled client and its outage state.

    While a server is down, calls fail at once for ``retry`` seconds instead of
    waiting for a timeout each time; the outage is logged once, and so is the
    recovery.  Locks whose release could not reach the server are kept and
    removed (token compared) when it answers again.
    """

    def __init__(self, address: ServerAddress, connect_timeout: float, io_timeout: float, retry: float,
                 tls_context: ssl.SSLContext | None = None) -> None:
        if tls_context is not None and address.path is not None:
            raise ConfigurationError("memcached server %s is a unix socket, which is not spoken over TLS" % address)
        self.address = address
        self.retry = retry
        self.tls_context = tls_context
        #: The server as messages name it: its address, with "(TLS)" over TLS.
        self.label = label(address, tls_context)
        self.client = ClientPool(
            address.pymemcache_server,
            connect_timeout=connect_timeout,
            timeout=io_timeout,
            no_delay=True,
            default_noreply=False,
            tls_context=tls_context,
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
                % (self.label, self.last_error, self.down_until - time.monotonic())
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
            why = describe_failure(exc) if self.tls_context is not None else describe_plain(exc)
            self._failed(why)
            raise BackendUnavailable("memcached %s: %s" % (self.label, why)) from exc
        if self.down_since is not None:
            self._recovered()
        return result

    def remember_unreleased(self, key: str, token: str) -> None:
        """Remove ``key`` if it carries ``token`` once the server answers again.

        Only for tokens nobody here holds: a release that could not reach the
        server, or an acquisition whose outcome stayed unknown.
        """
        self._unreleased.append((key, token))

    def _failed(self, why: str) -> None:
        with self._state_lock:
            self.last_error = why
            self.down_until = time.monotonic() + self.retry
            first = self.down_since is None
            if first:
                self.down_since = time.time()
        if first:
            logger.warning("memcached %s unreachable (%s): %s", self.label, self.last_error, self.while_down)

    def _recovered(self) -> None:
        with self._state_lock:
            if self.down_since is None:
                return
            outage = time.time() - self.down_since
            self.down_since = None
            self.down_until = 0.0
            pending = list(self._unreleased)
            self._unreleased.clear()
        logger.info("memcached %s answers again after %.1fs", self.label, outage)
        for key, token in pending:
            try:
                compare_and_delete(self, key, functools.partial(carries_token, token=token))
            except BackendUnavailable:
                break


#: Errors of a pooled connection whose server went away (and maybe came back); the last two over TLS.
_STALE_CONNECTION = (MemcacheUnexpectedCloseError, BrokenPipeError, ConnectionResetError, ssl.SSLEOFError,
                     ssl.SSLZeroReturnError)


def describe_plain(exc: BaseException) -> str:
    """``describe``, for a plain connection: a server that closes a fresh one unanswered may want TLS."""
    if isinstance(exc, (MemcacheUnexpectedCloseError, ConnectionResetError)):
        return ("%s (the server closed the connection without an answer, as a memcached that requires TLS "
                "does: see MEMCACHEDLOCK_TLS_CA)" % describe(exc))
    return describe(exc)


def carries_token(stored: bytes | None, token: str) -> bool:
    """True if a stored lock value was written by the acquisition with ``token``.

    Renewals and handovers rewrite the value but keep the token, and a token
    is never reused, so this names one acquisition exactly.
    """
    return stored is not None and stored.startswith(b"%s %s " % (MAGIC, token.encode("ascii")))


class _Unread(enum.Enum):
    UNREAD = enum.auto()


#: ``compare_and_delete``'s ``found`` when the caller has not read the item: it is read there.
UNREAD: Final = _Unread.UNREAD


def compare_and_delete(server: MemcachedServer, key: str, ours: Callable[[bytes], bool],
                       found: tuple[bytes, bytes] | None | Literal[_Unread.UNREAD] = UNREAD,
                       before_delete: Callable[[], None] | None = None) -> bool:
    """Delete ``key`` only if its value is ``ours`` and nobody changed it since it was read; True if deleted.

    ``gets``, then ``cas`` with exptime -1, which expires the item at once only
    if its cas is still the one read.  ``found`` is the (value, cas) a caller
    read already (None: no item); by default it is read here.  ``before_delete``
    runs between the comparison and the delete (a release stores its note there).
    """
    if found is UNREAD:
        found = server.call(ClientPool.gets_values, key).get(key)
    if found is None or not ours(found[0]):
        return False
    if before_delete is not None:
        before_delete()
    stored, cas = found
    return bool(server.call(ClientPool.cas_value, key, stored, cas, -1))


#: Answers that end a command's reply at their first line.
_ERROR_REPLIES = (b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR", b"BUSY")


def server_command(address: ServerAddress, command: bytes, timeout: float = 2.0,
                   tls_context: ssl.SSLContext | None = None) -> str:
    """Send one text command to a server over a fresh socket (TLS with ``tls_context``); return its whole answer.

    For what pymemcache cannot do whole (``raw_command`` returns only the
    first line and can drop bytes): ``stats``, ``stats settings``,
    ``lru_crawler metadump all``, ``version``.  ``stats`` and metadump answers
    are read up to ``END``, others one line.  Raises OSError (``socket.timeout``
    included) if the server cannot be reached or does not answer in time;
    over TLS a TLSFailure (an OSError too) whose message says what failed.
    """
    if tls_context is None:
        return _command(address, command, timeout, None)
    try:
        return _command(address, command, timeout, tls_context)
    except OSError as exc:
        raise TLSFailure("TLS: %s" % describe_failure(exc)) from exc


def _command(address: ServerAddress, command: bytes, timeout: float, tls_context: ssl.SSLContext | None) -> str:
    if address.path is not None:
        if tls_context is not None:
            raise ConfigurationError("memcached server %s is a unix socket, which is not spoken over TLS" % address)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: str | tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes] = address.path
    else:
        info = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        target = info[4]
        if tls_context is not None:
            sock = wrap(sock, tls_context, str(address.host))
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


def metadump_keys(address: ServerAddress, timeout: float = 5.0, tls_context: ssl.SSLContext | None = None) -> list[str]:
    """Keys a server holds, read with ``lru_crawler metadump all``.

    Raises BackendUnavailable if the server cannot be read or refuses (``-X``).
    """
    try:
        text = server_command(address, b"lru_crawler metadump all", timeout, tls_context)
    except OSError as exc:
        why = str(exc) if isinstance(exc, TLSFailure) else describe_plain(exc)
        raise BackendUnavailable("memcached %s: metadump failed: %s" % (label(address, tls_context), why)) from exc
    if not text.endswith("END\r\n"):
        raise BackendUnavailable("memcached %s refused metadump: %s"
                                 % (label(address, tls_context), text.strip()[:200]))
    keys = []
    for line in text.splitlines():
        if line.startswith("key="):
            keys.append(unquote(line.split(" ", 1)[0][4:]))
    return keys
