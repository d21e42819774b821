"""A lean, thread-safe pool of pymemcache ``Client`` connections to one server.

pymemcache's ``PooledClient`` takes a lock and enters a context manager on
every call; on the lock's hot path (one ``add`` to acquire, one ``md`` to
release) that overhead was a measurable part of the cost.  Here
a thread takes an idle client with ``list.pop()`` and puts it back with
``list.append()``, both atomic under the GIL, so no lock is needed: each
client is used by one thread at a time.  A client whose call raised is
closed, never reused (its connection may hold half an answer).  A forked
child forgets the parent's connections.

The commands of the lock's own requests are written straight onto the
pooled client's socket: pymemcache's generic command building and key
checks cost more than the lock's own work, and the goal (at most 1.6x a raw
pymemcache ``add`` + ``delete``) leaves room for one extra round trip but
not for that.  ``add_keeping_cas`` acquires and keeps the connection that
stored the lock; over that connection ``delete_if_unchanged`` releases (a
meta ``md`` with the item's cas, reading the waiter record in the same round
trip) and ``replace_if_unchanged`` hands the lock to another thread.  Only
when that connection is busy, or a renewal dropped the cas, does a release
read the lock and its waiter record (``gets_values``) and compare-and-delete
(``cas_value`` with exptime -1); renewals use the same two.  The commit gate
sends meta commands (``meta``).  Keys reaching here are already safe ASCII
(see ``keys.py``).  Connecting, timeouts, socket options, TLS (its
``tls_context``: the commands above then go over the TLS socket) and every
other command stay pymemcache's; its exception classes report protocol errors.
"""

from __future__ import annotations

import enum
import functools
import os
import socket
import weakref
from collections.abc import Callable
from typing import Any, Final, Literal, NoReturn, TypeVar

from pymemcache.client.base import Client
from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheServerError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownError,
)

#: Idle connections kept per server; more threads than this reconnect when they come back.
MAX_IDLE = 64

_pools: weakref.WeakSet[ClientPool] = weakref.WeakSet()

T = TypeVar("T")


class _Sentinel(enum.Enum):
    NOT_THERE = enum.auto()


#: Returned by ``_exchange_on`` when the connection asked for is not available.
_NOT_THERE: Final = _Sentinel.NOT_THERE

#: The client and the socket that carried a command (see ``delete_if_unchanged``).
Connection = tuple[Client, socket.socket]
#: Parses an answer off a socket, from what was read so far (``buf``, consumed as it goes).
Reader = Callable[[socket.socket, bytearray], T]


def _client_method(method: Callable[..., Any]) -> Callable[..., Any]:
    """``ClientPool.<name>``: pymemcache's ``Client.<name>`` (same signature) run on a pooled client."""

    @functools.wraps(method)
    def call(self: ClientPool, *args: Any, **kw: Any) -> Any:
        return self._run(method, args, kw)

    return call


class ClientPool:
    """The subset of pymemcache's client API the lock store uses, safe across threads."""

    def __init__(self, server: tuple[str, int] | str, max_idle: int = MAX_IDLE, **client_kw: Any) -> None:
        self.server = server
        self.max_idle = max_idle
        self.client_kw = client_kw
        self._idle: list[Client] = []
        _pools.add(self)

    @property
    def default_noreply(self) -> bool:
        noreply: bool = self.client_kw.get("default_noreply", True)
        return noreply

    @property
    def connect_timeout(self) -> float | None:
        return self.client_kw.get("connect_timeout")

    @property
    def timeout(self) -> float | None:
        return self.client_kw.get("timeout")

    def _new(self) -> Client:
        return Client(self.server, **self.client_kw)

    def _checkout(self) -> Client:
        try:
            return self._idle.pop()
        except IndexError:
            return self._new()

    def _checkin(self, client: Client) -> None:
        if len(self._idle) < self.max_idle:
            self._idle.append(client)
        else:
            client.close()

    def _run(self, method: Callable[..., T], args: tuple[object, ...], kw: dict[str, object]) -> T:
        """``method(client, *args, **kw)`` (a pymemcache Client method) on a pooled client."""
        client = self._checkout()
        try:
            result = method(client, *args, **kw)
        except BaseException:
            client.close()
            raise
        self._checkin(client)
        return result

    def _exchange(self, request: bytes, read: Reader[T]) -> tuple[T, Connection]:
        """Send ``request`` on a pooled connection, parse the answer with ``read(sock, buf)``.

        Returns the answer and the connection that carried it.
        """
        client = self._checkout()
        try:
            if client.sock is None:
                client._connect()
        except BaseException:
            client.close()
            raise
        sock = client.sock
        return self._send_and_read(client, sock, request, read), (client, sock)

    def add_keeping_cas(self, key: str, value: bytes, expire: int) -> tuple[bool, bytes | None, Connection | None]:
        """Add ``key`` (meta ``ms`` in mode E); return (stored, cas, connection).

        ``connection`` names the client and socket that carried the command;
        ``delete_if_unchanged`` can prove with it that the server did not
        restart since (and so that ``cas`` still names this very item).
        """
        return self.add_keeping_cas_and_read(key, value, expire)[:3]

    def add_keeping_cas_and_read(self, key: str, value: bytes, expire: int, *others: str
                                 ) -> tuple[bool, bytes | None, Connection | None, list[bytes | None]]:
        """``add_keeping_cas``, reading ``others`` in the same round trip (after the add: what it found then).

        Returns (stored, cas, connection, the value of each of ``others`` or None).
        """
        request = b"ms %s %d ME T%d c\r\n%s\r\n" % (key.encode("ascii"), len(value), expire, value) + b"".join(
            b"mg %s v\r\n" % other.encode("ascii") for other in others)
        answers, connection = self._exchange(request, functools.partial(_read_meta_answers, 1 + len(others)))
        line = answers[0][0]
        values = [answer for _, answer in answers[1:]]
        if line.startswith(b"HD"):
            return True, cas_flag(line), connection, values
        if line.startswith(b"NS"):
            return False, None, None, values
        _raise_for(line)

    def _exchange_on(self, connection: Connection, request: bytes, read: Reader[T]
                     ) -> T | Literal[_Sentinel.NOT_THERE]:
        """Like ``_exchange``, but only over ``connection``; _NOT_THERE if it is busy or closed.

        A cas is only proof of identity on the connection that stored the item:
        a server that restarted (and reset its cas counter) cannot answer there.
        """
        client, sock = connection
        try:
            self._idle.remove(client)
        except ValueError:
            return _NOT_THERE  # another thread uses it now, or it was closed
        if client.sock is not sock:
            self._checkin(client)
            return _NOT_THERE
        return self._send_and_read(client, sock, request, read)

    def _send_and_read(self, client: Client, sock: socket.socket, request: bytes, read: Reader[T]) -> T:
        """Send ``request`` on ``client``'s socket and parse the answer; a client that failed is closed, not reused."""
        try:
            sock.sendall(request)
            result = read(sock, bytearray())
        except BaseException:
            client.close()
            raise
        self._checkin(client)
        return result

    def replace_if_unchanged(self, connection: Connection, key: str, value: bytes, cas: bytes,
                             expire: int, also_get: str, first: Write | None = None
                             ) -> tuple[bytes, bytes | None] | None:
        """Replace the item stored with ``cas`` (meta ``ms`` with C) over ``connection``,
        reading ``also_get`` in the same round trip.

        ``first`` is written before, in the same request (see ``Write``).
        Returns (the new cas, valid on the same connection; the value of
        ``also_get`` or None), or None when the connection is not available or
        the item changed.
        """
        request = b"ms %s %d C%s T%d c\r\n%s\r\nmg %s v\r\n" % (
            key.encode("ascii"), len(value), cas, expire, value, also_get.encode("ascii"))
        answer = self._exchange_on(connection, _first(first) + request, _after(first, _read_status_and_value))
        if answer is _NOT_THERE:
            return None
        status, other = answer
        if status.startswith(b"HD"):
            new_cas = cas_flag(status)
            return (new_cas, other) if new_cas else None
        if status.startswith((b"EX", b"NF", b"NS")):
            return None
        _raise_for(status)

    def delete_if_unchanged(self, connection: Connection, key: str, cas: bytes,
                            also_get: str, first: Write | None = None) -> tuple[bool, bytes | None] | None:
        """Delete ``key`` if it still is the item stored with ``cas``, reading ``also_get`` too.

        Only over the connection that stored the item (see ``_exchange_on``).
        ``first`` is written before, in the same request (see ``Write``).
        Returns None when that connection is busy (another thread has it) or
        closed, or the item changed: the caller then compares the stored value.  Otherwise (True, value of
        ``also_get`` or None).
        """
        request = b"md %s C%s\r\nmg %s v\r\n" % (key.encode("ascii"), cas, also_get.encode("ascii"))
        answer = self._exchange_on(connection, _first(first) + request, _after(first, _read_status_and_value))
        if answer is _NOT_THERE:
            return None
        deleted, other = answer
        if deleted == b"HD":
            return True, other
        if deleted in (b"EX", b"NF"):
            return None
        _raise_for(deleted)

    def cas_value(self, key: str, value: bytes, cas: bytes, expire: int) -> bool | None:
        """``cas``: True if stored, False if changed since (EXISTS), None if gone (NOT_FOUND).

        ``expire=-1`` expires the item at once: a compare-and-delete.
        """
        request = b"cas %s 0 %d %d %s\r\n%s\r\n" % (key.encode("ascii"), expire, len(value), cas, value)
        return self._exchange(request, _read_stored)[0]

    def gets_values(self, *keys: str) -> dict[str, tuple[bytes, bytes]]:
        """``gets``: {key: (value, cas)} for the keys that exist."""
        request = b"gets %s\r\n" % b" ".join(key.encode("ascii") for key in keys)
        return self._exchange(request, _read_values)[0]

    def meta(self, request: bytes, count: int) -> list[tuple[bytes, bytes | None]]:
        """Send ``count`` pipelined meta commands; return each one's (status line, value or None)."""
        return self._exchange(request, functools.partial(_read_meta_answers, count))[0]

    add = _client_method(Client.add)
    set = _client_method(Client.set)
    cas = _client_method(Client.cas)
    get = _client_method(Client.get)
    gets = _client_method(Client.gets)
    get_many = _client_method(Client.get_many)
    gets_many = _client_method(Client.gets_many)
    delete = _client_method(Client.delete)
    stats = _client_method(Client.stats)

    def close(self) -> None:
        """Close the idle connections (clients in use are closed when they come back over the limit)."""
        idle, self._idle = self._idle, []
        for client in idle:
            client.close()

    def _forget(self) -> None:
        """In a forked child: drop the parent's connections without talking on them."""
        self._idle = []


class Write:
    """An item to store (``ms``) in front of another request, in its round trip.

    ``stored`` tells afterwards whether the server stored it (None: not sent).
    zlock writes its note this way in front of the release that follows it:
    memcached carries out one connection's commands in order, so the next
    holder, whose ``add`` comes after the release, reads the note.
    """

    __slots__ = ("key", "value", "expire", "stored")

    def __init__(self, key: str, value: bytes, expire: int) -> None:
        self.key, self.value, self.expire = key, value, expire
        self.stored: bool | None = None

    def command(self) -> bytes:
        return b"ms %s %d T%d\r\n%s\r\n" % (self.key.encode("ascii"), len(self.value), self.expire, self.value)


def _first(write: Write | None) -> bytes:
    return write.command() if write is not None else b""


def _after(write: Write | None, read: Reader[T]) -> Reader[T]:
    """``read``, after the answer to ``write`` (if any) is taken off the connection into ``write.stored``.

    A refusal of the write (a SERVER_ERROR, say) does not fail the request it precedes.
    """
    if write is None:
        return read

    def read_after(sock: socket.socket, buf: bytearray) -> T:
        write.stored = _read_line(sock, buf).startswith(b"HD")
        return read(sock, buf)

    return read_after


def _receive(sock: socket.socket, buf: bytearray) -> None:
    """Append what the server sent next to ``buf``; a closed connection is an error."""
    chunk = sock.recv(65536)
    if not chunk:
        raise MemcacheUnexpectedCloseError()
    buf += chunk


def _read_line(sock: socket.socket, buf: bytearray) -> bytes:
    while True:
        end = buf.find(b"\r\n")
        if end >= 0:
            line = bytes(buf[:end])
            del buf[: end + 2]
            return line
        _receive(sock, buf)


def _read_data(sock: socket.socket, buf: bytearray, size: int) -> bytes:
    """A data block of ``size`` bytes and its CRLF, taken off ``buf``; returns the data."""
    while len(buf) < size + 2:
        _receive(sock, buf)
    data = bytes(buf[:size])
    del buf[: size + 2]
    return data


def cas_flag(status: bytes) -> bytes | None:
    """The ``c`` flag (the item's cas) of a meta command's status line, or None."""
    return next((flag[1:] for flag in status.split()[1:] if flag.startswith(b"c")), None)


def _read_status_and_value(sock: socket.socket, buf: bytearray) -> tuple[bytes, bytes | None]:
    """The answers to a meta command pipelined with ``mg ... v``: (its status line, the value or None)."""
    deleted = _read_line(sock, buf)
    found = _read_line(sock, buf)
    if found == b"EN":
        return deleted, None
    if not found.startswith(b"VA "):
        _raise_for(found)
    return deleted, _read_data(sock, buf, int(found.split()[1]))


def _read_meta_answers(count: int, sock: socket.socket, buf: bytearray) -> list[tuple[bytes, bytes | None]]:
    """``count`` meta answers: a value (``VA``) with its status line, or a bare status (HD, EN, NS, EX, NF)."""
    answers: list[tuple[bytes, bytes | None]] = []
    for _ in range(count):
        line = _read_line(sock, buf)
        if line.startswith(b"VA "):
            answers.append((line, _read_data(sock, buf, int(line.split()[1]))))
        elif line[:2] in (b"HD", b"EN", b"NS", b"EX", b"NF"):
            answers.append((line, None))
        else:
            _raise_for(line)
    return answers


def _raise_for(line: bytes) -> NoReturn:
    if line.startswith(b"SERVER_ERROR"):
        raise MemcacheServerError(line[13:].decode("ascii", "replace"))
    if line.startswith(b"CLIENT_ERROR"):
        raise MemcacheClientError(line[13:].decode("ascii", "replace"))
    raise MemcacheUnknownError(line[:200].decode("ascii", "replace"))


def _read_stored(sock: socket.socket, buf: bytearray) -> bool | None:
    line = _read_line(sock, buf)
    if line == b"STORED":
        return True
    if line in (b"NOT_STORED", b"EXISTS"):
        return False
    if line == b"NOT_FOUND":
        return None
    _raise_for(line)


def _read_values(sock: socket.socket, buf: bytearray) -> dict[str, tuple[bytes, bytes]]:
    found: dict[str, tuple[bytes, bytes]] = {}
    while True:
        line = _read_line(sock, buf)
        if line == b"END":
            return found
        parts = line.split()
        if len(parts) != 5 or parts[0] != b"VALUE":
            _raise_for(line)
        found[parts[1].decode("ascii")] = (_read_data(sock, buf, int(parts[3])), parts[4])


def _after_fork_in_child() -> None:
    for pool in list(_pools):
        pool._forget()


os.register_at_fork(after_in_child=_after_fork_in_child)
