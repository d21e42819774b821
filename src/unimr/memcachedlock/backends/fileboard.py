"""The waiter board in the lock directory: one announcement per lock, in ``<lock>.want`` (``IWaiterBoard``).

Without a board a process whose threads keep taking a lock can starve
another process of it: the file store is polled, and a release wakes the
next waiting thread of its own process at once (``waiting``) while the other
process sleeps between its polls.  With it, the head waiter of each process
writes its ``records.Want`` beside the lock file, a release reads it while
the lock file is still its own (``FileLease.successor``) and wakes that
waiter through its datagram socket, and the releasing process leaves it its
turn, as on memcached.

The announcement file is written in place under an exclusive ``flock``,
read under a shared one, and removed when its waiter withdraws (by a holder
of that flock; a writer that finds the path no longer names the file it
locked opens it again, as with lock files).  An announcement older than
``WANT_TTL`` seconds counts as absent, as memcached would have dropped it.
An announcement costs or saves time, never safety: the lock itself is the
lock file's ``flock``.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from typing import Literal, Protocol

from zope.interface import implementer

from ..errors import BackendUnavailable
from ..interfaces import IWaiterBoard
from ..lease import Lease
from .lockdir import LOCK_SUFFIX, OPEN_FLAGS, READ_FLAGS, open_regular, same_file
from .records import WANT_TTL, Want

#: The announcement file beside ``<name>.lock``.
WANT_SUFFIX = ".want"
#: Tries, a millisecond apart, to get an announcement file's flock (held for microseconds by others).
_FLOCK_TRIES = 20


class _Store(Protocol):
    """What the board uses of its file store."""

    def path_for(self, name: str) -> str:
        """The lock file of ``name``."""

    def is_held(self, name: str) -> bool:
        """True if somebody holds ``name``."""


def want_path(lock_path: str) -> str:
    """The announcement file of the lock file ``lock_path``."""
    return lock_path[: -len(LOCK_SUFFIX)] + WANT_SUFFIX


def _flock(fd: int, how: int, path: str) -> None:
    """``flock`` without blocking for long: BackendUnavailable if it stays taken (bounded wait)."""
    for attempt in range(_FLOCK_TRIES):
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(0.001 * (attempt > 0))
        except OSError as exc:
            raise BackendUnavailable("cannot lock announcement file %s: %s" % (path, exc)) from exc
    raise BackendUnavailable("announcement file %s stayed locked by another process" % path)


def _open_locked(path: str, create: bool) -> int | None:
    """``path`` opened (``create``: made if absent) and flock'ed exclusively, None if it is gone or was
    removed before we had its flock: only a holder of that flock removes it (``drop_want``)."""
    try:
        fd = open_regular(path, OPEN_FLAGS if create else OPEN_FLAGS & ~os.O_CREAT)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BackendUnavailable("cannot open announcement file %s: %s" % (path, exc)) from exc
    try:
        _flock(fd, fcntl.LOCK_EX, path)
        if same_file(fd, path):
            return fd
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def _current(fd: int) -> bytes | None:
    """The announcement in the open file, None if it is empty or older than WANT_TTL."""
    if time.time() - os.fstat(fd).st_mtime > WANT_TTL:
        return None
    return os.pread(fd, 4096, 0) or None


def read_want(path: str) -> bytes | None:
    """The announcement stored in ``path`` (under a shared flock), or None; never raises for a missing file."""
    try:
        fd = open_regular(path, READ_FLAGS)
    except (OSError, BackendUnavailable):
        return None  # no announcement (or a file the store does not use): nobody is woken
    try:
        _flock(fd, fcntl.LOCK_SH, path)
        return _current(fd)
    except (OSError, BackendUnavailable):
        return None
    finally:
        os.close(fd)


@implementer(IWaiterBoard)
class FileWaiterBoard:
    """The waiter announcements of a file store, kept beside its lock files."""

    def __init__(self, store: _Store) -> None:
        self.store = store

    def _path(self, name: str) -> str:
        return want_path(self.store.path_for(name))

    def peek_want(self, name: str) -> tuple[bool, Want | None, bytes | None]:
        """(is the lock held, the announcement or None, the stored bytes as its cas)."""
        held = self.store.is_held(name)
        stored = read_want(self._path(name))
        return held, Want.decode(stored), stored

    def put_want(self, name: str, value: bytes, cas: bytes | None, add: bool) -> bool:
        """Store an announcement: ``add`` it where there is none, or replace the one read as ``cas``."""
        path = self._path(name)
        for _ in range(_FLOCK_TRIES):
            fd = _open_locked(path, create=True)
            try:
                if fd is None:
                    continue  # withdrawn and removed after we opened it: open the path again
                current = _current(fd)
                if (current is not None) if add else (current is None or current != cas):
                    return False
                os.pwrite(fd, value, 0)
                os.ftruncate(fd, len(value))
                return True
            except OSError as exc:
                raise BackendUnavailable("cannot write announcement file %s: %s" % (path, exc)) from exc
            finally:
                if fd is not None:
                    os.close(fd)
        return False

    def drop_want(self, name: str, token: str) -> bool:
        """Remove the announcement file if it is still ``token``'s announcement."""
        path = self._path(name)
        fd = _open_locked(path, create=False)
        if fd is None:
            return False
        try:
            want = Want.decode(_current(fd))
            if want is None or want.token != token:
                return False
            os.unlink(path)
            return True
        except OSError as exc:
            raise BackendUnavailable("cannot remove announcement file %s: %s" % (path, exc)) from exc
        finally:
            os.close(fd)

    def hand_record_over(self, lease: Lease, thread: threading.Thread, ttl: float) -> Want | Literal[False] | None:
        """Rewrite ``lease``'s lock file for ``thread`` and lease ``ttl``, then read the announcement.

        False if the lock file is no longer the lease's, and for a lease of another store.
        """
        rewrite = getattr(lease, "rewrite_record", None)  # a FileLease's, when the lease is the store's
        if lease.backend is not self.store or rewrite is None or not rewrite(thread, ttl):
            return False
        return Want.decode(read_want(self._path(lease.name)))


__all__ = ["FileWaiterBoard", "WANT_SUFFIX", "read_want", "want_path"]
