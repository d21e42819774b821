"""The commit gate in the lock directory: a shared ``flock`` (see ``interfaces.ICommitGate``).

An optimistic commit takes a shared flock on ``<name>.gate`` and then looks
at the lock file; a holder takes the lock and then an exclusive flock on the
gate file, which the kernel grants once every shared one is gone.  flock
calls are atomic, so a commit and a holder never both miss each other.  A
process that dies during its commit loses its flock with it: nothing to
reset.

A pass appends its entry to the note under an exclusive flock of the note
file, after checking that the path still names the file it locked; a pass
that found the note long compacts it instead, by a rename made while it
holds that flock (a pass that waited for it then finds a new file).  A holder that
has drained the gate writes the whole note as before (no pass is out).
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable
from typing import Protocol

from zope.interface import implementer

from ..errors import BackendUnavailable
from ..interfaces import ICommitGate
from .base import CommitPass, gate_not_drained, poll
from .lockdir import LOCK_SUFFIX, NOTE_SUFFIX, OPEN_FLAGS, open_regular, open_to_read, same_file, write_note

logger = logging.getLogger(__name__)

GATE_SUFFIX = ".gate"
#: Longest wait of a pass for the note file's flock (other passes hold it for one write).
NOTE_WAIT = 1.0

_APPEND_FLAGS = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


class Store(Protocol):
    """What a gate asks of ``file.FileBackend`` (not imported: that module imports this one)."""

    @property
    def directory(self) -> str:
        """The lock directory."""

    def path_for(self, name: str) -> str:
        """The lock file of ``name``."""

    def is_held(self, name: str) -> bool:
        """True if somebody holds ``name``."""

    def get_note(self, name: str) -> bytes | None:
        """The note of ``name``, or None."""


def _flock_within(fd: int, operation: int, timeout: float) -> bool:
    """``flock(fd, operation)`` without blocking longer than ``timeout`` seconds; True if granted."""

    def granted() -> bool:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    return poll(granted, timeout)


def _open(path: str, flags: int) -> int:
    try:
        return open_regular(path, flags)
    except BackendUnavailable:
        raise
    except OSError as exc:
        raise BackendUnavailable("cannot open %s: %s" % (path, exc)) from exc


def _append_or_compact(path: str, directory: str, entry: bytes,
                       compact: Callable[[bytes | None], bytes] | None, seen: int) -> None:
    """Append `` entry`` to the note at ``path``, or replace it by ``compact(note)``, under its flock.

    A note shorter than the ``seen`` bytes the pass found on entry was
    compacted since: it is appended to, so that passes that found the same
    long note do not each replace it (every replacement sends the passes
    waiting for the old file's flock to open the new one).  Retries until
    NOTE_WAIT seconds have passed, however often the file is replaced.
    """
    deadline = time.monotonic() + NOTE_WAIT
    while True:
        fd = _open(path, _APPEND_FLAGS)
        try:
            if not _flock_within(fd, fcntl.LOCK_EX, max(0.0, deadline - time.monotonic())):
                raise BackendUnavailable("note %s stayed locked for %.1fs" % (path, NOTE_WAIT))
            if not same_file(fd, path):
                continue  # replaced while we waited: append to the new one
            size = os.fstat(fd).st_size
            if compact is not None and size >= seen:
                write_note(directory, path, compact(os.pread(fd, size, 0) or None))
            else:
                os.write(fd, b" " + entry)
            return
        except OSError as exc:
            raise BackendUnavailable("cannot append to note %s: %s" % (path, exc)) from exc
        finally:
            os.close(fd)


class FileCommitPass(CommitPass):
    """One optimistic commit holding a shared flock on the gate file."""

    __slots__ = ("fd", "note_path", "directory")

    def __init__(self, fd: int, note_path: str, directory: str, note: bytes | None) -> None:
        super().__init__(note)
        self.fd, self.note_path, self.directory = fd, note_path, directory

    def _leave(self, entry: bytes | None, compact: Callable[[bytes | None], bytes] | None) -> None:
        try:
            if entry:
                _append_or_compact(self.note_path, self.directory, entry, compact, len(self.note or b""))
        except BackendUnavailable as exc:
            logger.debug("could not record an optimistic commit in %s: %s", self.note_path, exc)
        finally:
            os.close(self.fd)  # drops the shared flock

    def __repr__(self) -> str:
        return "<commit pass %s%s>" % (self.note_path, " (left)" if self.left else "")


@implementer(ICommitGate)
class FileCommitGate:
    """The commit gates of a file store: one gate file per lock name."""

    def __init__(self, backend: Store) -> None:
        self.backend = backend

    def _paths(self, name: str) -> tuple[str, str]:
        base = self.backend.path_for(name)[: -len(LOCK_SUFFIX)]
        return base + GATE_SUFFIX, base + NOTE_SUFFIX

    def enter(self, name: str) -> FileCommitPass | None:
        gate_path, note_path = self._paths(name)
        fd: int | None
        fd = _open(gate_path, OPEN_FLAGS)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return None  # a new holder is draining: it holds the lock
            if self.backend.is_held(name):
                return None
            entered, fd = FileCommitPass(fd, note_path, self.backend.directory, self.backend.get_note(name)), None
            return entered
        except OSError as exc:
            raise BackendUnavailable("cannot enter gate %s: %s" % (gate_path, exc)) from exc
        finally:
            if fd is not None:
                os.close(fd)

    def passing(self, name: str) -> int:
        """1 if commits are passing (flock does not count them), else 0."""
        gate_path, _ = self._paths(name)
        fd = open_to_read(gate_path, "read gate")
        if fd is None:
            return 0
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return 0
        except BlockingIOError:
            return 1
        finally:
            os.close(fd)

    def drain(self, name: str, timeout: float) -> bytes | None:
        gate_path, _ = self._paths(name)
        fd = open_to_read(gate_path, "read gate")
        if fd is not None:
            try:
                drained = _flock_within(fd, fcntl.LOCK_EX, timeout)
            except OSError as exc:
                raise BackendUnavailable("cannot lock gate %s: %s" % (gate_path, exc)) from exc
            finally:
                os.close(fd)
            if not drained:
                gate_not_drained(logger, "optimistic commits of lock %s still passing after %.1fs: going on "
                                 "(ZODB's conflict detection still guards this commit)", name, timeout)
        return self.backend.get_note(name)
