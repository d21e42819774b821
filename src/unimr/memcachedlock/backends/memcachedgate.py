"""The commit gate in memcached: a counter next to the lock (see ``interfaces.ICommitGate``).

An optimistic commit increments ``<lock>#gate`` and reads the lock and its
note in the same request; a holder reads the counter after its ``add``.
memcached carries out one connection's commands in order and each command
atomically, so whichever of the two comes second sees the first: the
commit sees the lock (and leaves at once, to take the lock instead), or the
holder sees the count (and waits for it to drop).

A pass appends its entry to the note (``ms`` mode A, then ``mg`` with ``T``
to keep the note for another ``note_ttl``: an append keeps the item's old
expiry) and decrements the counter in one request, so a holder that saw the
count drop reads every entry of the commits it waited for.  A long note is compacted by the pass
that found it so, with the cas read on entry: only a note nobody changed
since is replaced, and the pass appends its own entry in the same request
anyway, so no entry is ever dropped.

The counter lives ``GATE_TTL`` seconds after its last increment.  A process
that dies inside a commit leaves its count behind; the next holder waits
``timeout`` for it, resets the counter and says so once.

A restart forgets the counter while commits that entered before it may
still be running, and a missing counter reads like one nobody entered.  So a
holder that finds neither counter nor note waits until the server has been
up ``timeout`` seconds -- the time a count of a dead process is waited for
-- before it reads the note: commits that entered before the restart have
then appended their entries.  On a server up longer it does not wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from zope.interface import implementer

from ..errors import BackendUnavailable
from ..interfaces import ICommitGate
from .base import CommitPass, gate_not_drained, poll
from .memcachedserver import MemcachedServer
from .pool import ClientPool, cas_flag

logger = logging.getLogger(__name__)

GATE_SUFFIX = "#gate"
#: Seconds the counter outlives its last increment.
GATE_TTL = 60
#: What memcached's ``stats`` uptime says right after a start (1.6.18 counts from two seconds before).
UPTIME_AT_START = 2

class Store(Protocol):
    """What a gate asks of ``memcached.MemcachedBackend`` (not imported: that module imports this one):
    its key prefix and the server of a lock."""

    @property
    def prefix(self) -> str:
        """The namespace of the store's keys."""

    def server_for(self, name: str) -> MemcachedServer:
        """The server that holds lock ``name``."""


def _uptime(server: MemcachedServer) -> float:
    """Seconds the server has been up (0 if it does not say: then it may just have restarted)."""
    try:
        return float(server.call(ClientPool.stats).get(b"uptime", 0))
    except (BackendUnavailable, TypeError, ValueError):
        return 0.0


def _meta_set(key: bytes, value: bytes, flags: bytes) -> bytes:
    return b"ms %s %d %s\r\n%s\r\n" % (key, len(value), flags, value)


class MemcachedCommitPass(CommitPass):
    """One optimistic commit counted in ``gate`` (see the module docstring)."""

    __slots__ = ("server", "gate", "note_key", "note_ttl", "note_cas")

    def __init__(self, server: MemcachedServer, gate: bytes, note_key: bytes, note_ttl: int,
                 note: bytes | None, note_cas: bytes | None) -> None:
        super().__init__(note)
        self.server, self.gate, self.note_key, self.note_ttl, self.note_cas = server, gate, note_key, note_ttl, note_cas

    def _leave(self, entry: bytes | None, compact: Callable[[bytes | None], bytes] | None) -> None:
        commands = []
        if entry and compact is not None and self.note_cas is not None:
            whole = compact(self.note)
            commands.append(_meta_set(self.note_key, whole, b"C%s T%d" % (self.note_cas, self.note_ttl)))
        if entry:
            commands.append(_meta_set(self.note_key, b"", b"ME T%d" % self.note_ttl))  # append needs an item
            commands.append(_meta_set(self.note_key, b" " + entry, b"MA"))
            commands.append(b"mg %s T%d\r\n" % (self.note_key, self.note_ttl))
        commands.append(b"ma %s MD\r\n" % self.gate)
        try:
            self.server.call(ClientPool.meta, b"".join(commands), len(commands))
        except BackendUnavailable as exc:
            logger.debug("optimistic commit could not leave gate %s (%s): the next holder resets it",
                         self.gate.decode(), exc)

    def __repr__(self) -> str:
        return "<commit pass %s%s>" % (self.gate.decode(), " (left)" if self.left else "")


@implementer(ICommitGate)
class MemcachedCommitGate:
    """The commit gates of a memcached store, one counter per lock name."""

    def __init__(self, backend: Store, note_suffix: str, note_ttl: int) -> None:
        self.backend = backend
        self.note_suffix = note_suffix.encode("ascii")
        self.note_ttl = note_ttl

    def _keys(self, name: str) -> tuple[bytes, bytes, bytes]:
        key = (self.backend.prefix + name).encode("ascii")
        return key, key + GATE_SUFFIX.encode("ascii"), key + self.note_suffix

    def enter(self, name: str) -> MemcachedCommitPass | None:
        server = self.backend.server_for(name)
        key, gate, note_key = self._keys(name)
        request = b"ma %s N%d J1 T%d\r\nmg %s\r\nmg %s v c\r\n" % (gate, GATE_TTL, GATE_TTL, key, note_key)
        answers = server.call(ClientPool.meta, request, 3)
        found, note = answers[1][0], answers[2]
        entered = MemcachedCommitPass(server, gate, note_key, self.note_ttl, note[1], cas_flag(note[0]))
        if found.startswith(b"HD"):
            entered.leave()
            return None
        return entered

    def passing(self, name: str) -> int:
        server = self.backend.server_for(name)
        _, gate, _ = self._keys(name)
        (_, count), = server.call(ClientPool.meta, b"mg %s v\r\n" % gate, 1)
        return max(0, int(count)) if count is not None else 0

    def drain(self, name: str, timeout: float) -> bytes | None:
        server = self.backend.server_for(name)
        _, gate, note_key = self._keys(name)
        request = b"mg %s v\r\nmg %s v\r\n" % (gate, note_key)
        last: list[bytes | None] = []

        def empty() -> bool:
            last[:] = [answer for _, answer in server.call(ClientPool.meta, request, 2)]
            return last[0] is None or int(last[0]) <= 0

        if not poll(empty, timeout):
            server.call(ClientPool.meta, _meta_set(gate, b"0", b"T%d" % GATE_TTL), 1)
            gate_not_drained(logger, "optimistic commits of lock %s still counted (%s) after %.1fs: counter "
                             "reset (a process may have died during a commit; ZODB's conflict detection "
                             "still guards this one)", name, int(last[0] or 0), timeout)  # a count: not empty
        elif last == [None, None]:
            wait = timeout + UPTIME_AT_START - _uptime(server)
            if wait > 0:
                logger.debug("lock %s: no gate counter and no note on a server up for less than %.1fs: waiting "
                             "%.1fs for optimistic commits that entered before a restart", name, timeout, wait)
                time.sleep(wait)
                (_, note), = server.call(ClientPool.meta, b"mg %s v\r\n" % note_key, 1)
                return note
        return last[1]
