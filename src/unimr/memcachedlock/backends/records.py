"""What the lock stores record: the holder of each lock, and the waiter that announced itself.

The stored value names the holder (host, pid, thread) and when it took the
lock, so that ``memcachedlock list`` and ``show`` can answer "who holds the
catalog lock, and since when?" without asking the holder.  The random token
at its start is what release and renewal compare.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from urllib.parse import quote, unquote

MAGIC = b"mcl1"

_HOSTNAME = socket.gethostname() or "localhost"
#: The host field of a holder record (quoted once: it is in every acquisition's value).
_HOST_FIELD = quote(_HOSTNAME, safe="").encode("ascii")


def new_token() -> str:
    """A random token for one acquisition (64 bits, hex)."""
    return os.urandom(8).hex()


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lock, as recorded by the holder when it took or renewed it."""

    name: str
    token: str
    host: str
    pid: int
    thread: int
    thread_name: str
    acquired: float
    expires: float
    backend: str = ""

    @property
    def age(self) -> float:
        """Seconds since the lock was taken (by the holder's clock)."""
        return max(0.0, time.time() - self.acquired)

    @property
    def ttl_left(self) -> float:
        """Seconds until the lease runs out unless renewed."""
        return max(0.0, self.expires - time.time())

    def as_dict(self) -> dict[str, str | int | float]:
        data: dict[str, str | int | float] = dataclasses.asdict(self)
        data["age"] = round(self.age, 3)
        data["ttl_left"] = round(self.ttl_left, 3)
        return data


def encode_value(token: str, ttl: float, acquired: float | None = None,
                 thread: threading.Thread | None = None) -> bytes:
    """The bytes stored for an acquisition by ``thread`` (default: the calling thread)."""
    now = time.time()
    if thread is None:
        thread = threading.current_thread()
    return b" ".join(
        (
            MAGIC,
            token.encode("ascii"),
            _HOST_FIELD,
            b"%d" % os.getpid(),
            b"%d" % (thread.ident or 0),
            quote(thread.name, safe="").encode("ascii"),
            b"%.3f" % (now if acquired is None else acquired),
            b"%.3f" % (now + ttl),
        )
    )


def renewed_value(value: bytes, ttl: float) -> bytes:
    """``value`` with its expiry moved to now + ttl (token and holder unchanged)."""
    head, _, _ = value.rpartition(b" ")
    return head + b" %.3f" % (time.time() + ttl)


def token_of(value: bytes | None) -> str | None:
    """The token at the start of a stored value, or None if it is not ours."""
    if not value or not value.startswith(MAGIC + b" "):
        return None
    return value.split(b" ", 2)[1].decode("ascii", "replace")


def decode_value(name: str, value: bytes, backend: str = "") -> Holder | None:
    """Parse a stored value; None if it was not written by this package."""
    parts = value.split(b" ")
    if len(parts) != 8 or parts[0] != MAGIC:
        return None
    try:
        return Holder(
            name=name,
            token=parts[1].decode("ascii"),
            host=unquote(parts[2].decode("ascii")),
            pid=int(parts[3]),
            thread=int(parts[4]),
            thread_name=unquote(parts[5].decode("ascii")),
            acquired=float(parts[6]),
            expires=float(parts[7]),
            backend=backend,
        )
    except (UnicodeDecodeError, ValueError):
        return None


# -- the waiter record ------------------------------------------------------------------

#: This host, as a waiter announcement names it.
WANT_HOST = _HOSTNAME.encode("utf-8", "replace").replace(b" ", b"_")
WANT_MAGIC = b"w1"
#: Seconds an announcement lives unless its waiter refreshes it.
WANT_TTL = 2


class Want:
    """A waiting process's announcement, as stored under ``<key>#want``."""

    __slots__ = ("token", "host", "pid", "since", "pause", "address")

    def __init__(self, token: str, host: bytes, pid: int, since: float, pause: float, address: bytes) -> None:
        self.token = token
        self.host = host
        self.pid = pid
        self.since = since
        self.pause = pause
        self.address = address

    def encode(self) -> bytes:
        return b"%s %s %s %d %.6f %.4f %s" % (
            WANT_MAGIC, self.token.encode("ascii"), self.host, self.pid, self.since, self.pause,
            self.address.hex().encode("ascii") or b"-",
        )

    @classmethod
    def decode(cls, value: bytes | None) -> Want | None:
        """Parse a stored announcement; None for anything else (no announcement)."""
        if not value:
            return None
        parts = value.split(b" ")
        if len(parts) != 7 or parts[0] != WANT_MAGIC:
            return None
        try:
            address = b"" if parts[6] == b"-" else bytes.fromhex(parts[6].decode("ascii"))
            return cls(parts[1].decode("ascii"), parts[2], int(parts[3]), float(parts[4]),
                       float(parts[5]), address)
        except (UnicodeDecodeError, ValueError):
            return None

    @property
    def local(self) -> bool:
        return self.host == WANT_HOST and bool(self.address)
