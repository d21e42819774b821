"""Wake-up datagrams: how a releasing thread wakes the head waiter of a process on this host.

Each waiting process's head binds a unix datagram socket in the Linux
abstract namespace (nothing to clean up) and sleeps on it between polls; a
releaser sends it one byte.  A lost datagram costs time, never safety: the
head polls the store anyway (see ``waiting``).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time

logger = logging.getLogger(__name__)

_sender: socket.socket | None = None
_sender_lock = threading.Lock()


def send_wake(address: bytes) -> bool:
    """Send a wake-up datagram to a waiter's socket; True if it was delivered to a live socket."""
    global _sender
    if not address:
        return False
    sender = _sender
    if sender is None:
        with _sender_lock:
            if _sender is None:
                try:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                except OSError:
                    return False
                sock.setblocking(False)
                _sender = sock
            sender = _sender
    try:
        sender.sendto(b"w", address)
        return True
    except BlockingIOError:
        return True  # its queue is full of wake-ups already
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            logger.debug("wake-up datagram to %r failed: %s", address, exc)
        return False


def bind_wake_socket() -> tuple[socket.socket | None, bytes]:
    """A datagram socket in the abstract namespace, bound to a random name (Linux)."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    except (OSError, AttributeError):
        return None, b""
    address = b"\0unimr.memcachedlock/" + os.urandom(8).hex().encode("ascii")
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        return None, b""
    return sock, address


def await_wake(sock: socket.socket, pause: float) -> bool:
    """Sleep ``pause`` seconds or until a datagram arrives on ``sock``; True if one did (the rest are drained)."""
    woken = False
    try:
        sock.settimeout(pause)
        sock.recv(16)
        woken = True
        sock.setblocking(False)
        while True:
            sock.recv(16)
    except (TimeoutError, BlockingIOError, InterruptedError):
        pass
    except OSError as exc:
        logger.debug("wake-up socket failed: %s", exc)
        time.sleep(pause)
    return woken


def _after_fork_in_child() -> None:
    global _sender, _sender_lock
    _sender_lock = threading.Lock()
    _sender = None


os.register_at_fork(after_in_child=_after_fork_in_child)


__all__ = ["send_wake", "bind_wake_socket", "await_wake"]
