"""The file lock store: ``fcntl.flock`` on one file per lock in a lock directory.

This is the embedded store for one host (several ZEO clients on one machine,
the common Plone set-up) and the fallback while memcached is unreachable.

Why it is safe:

* ``flock`` belongs to an *open file description*.  Every acquisition opens
  the lock file afresh, so two threads of one process exclude each other
  exactly like two processes do.
* The kernel drops a lock the moment its holder's process dies (even by
  SIGKILL): a crashed holder never blocks anybody.
* Lock files are removed only by a process that holds their ``flock``.  An
  acquirer that gets the ``flock`` checks afterwards that the path still
  names the inode it locked; if the file was removed (or replaced) meanwhile
  it retries with a fresh open.  So removing files never lets two holders in.
* The holder writes its description (``records.encode_value``: token, host,
  pid, thread, since, expiry) into the file, which is what ``holder()`` and
  ``list_locks()`` read; renewal rewrites the expiry.

Waiters poll the lock file; the head waiter of each process also announces
itself in ``<name>.want`` (``fileboard``), so that a release wakes it and the
releasing process gives it its turn instead of handing the lock to its own
threads for ever.

A file lock does not expire while its holder's process lives: the lease is
recorded and renewed for inspection, but only the holder's release, its
death or ``break_lock`` frees it.  Stealing a live holder's flock is not
possible, and guessing that it is stuck would risk two writers.

The directory (``Settings.lock_dir``) is created with mode 0700 if missing.
Whoever can write into it can remove lock files under a live holder or
plant FIFOs and symlinks, so it must be private: a real directory (not a
symlink), owned by this uid, not writable by group or others.  Anything else
is a ConfigurationError raised when the store is built (on the first use of a
lock) that names the directory and the fix; if the directory disappears or
fills up later, ``acquire`` raises BackendUnavailable.

Inside it the store trusts nothing it did not make.  Every file is opened with
``O_NOFOLLOW | O_NONBLOCK`` and used only if ``fstat`` says it is a regular
file, so a planted symlink is never followed and a planted FIFO never blocks.
A file is removed only if it looks like one the store created: a regular file
owned by this uid, with one link, holding a lock record (or nothing yet).
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable

from ..config import Settings
from ..errors import BackendUnavailable, ConfigurationError
from ..lease import Lease
from .base import Backend, Warn
from .fileboard import FileWaiterBoard, read_want, want_path
from .filegate import FileCommitGate
from .lockdir import (
    LOCK_SUFFIX,
    NOTE_SUFFIX,
    OPEN_FLAGS,
    READ_FLAGS,
    NotRegularFile,
    open_regular,
    open_to_read,
    prepare_lock_dir,
    read_note,
    remove_note,
    same_file,
    write_note,
)
from .records import MAGIC, Holder, decode_value, encode_value, new_token, renewed_value

logger = logging.getLogger(__name__)

#: Attempts to lock a path whose file is being removed and recreated by others.
_REOPEN_ATTEMPTS = 8


def _made_by_us(fd: int) -> bool:
    """True if the open file looks like one the store created (so it may remove it)."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_nlink != 1:
        return False
    head = os.pread(fd, len(MAGIC) + 1, 0)
    return head in (b"", MAGIC + b" ")


def _write_value(fd: int, value: bytes) -> None:
    os.pwrite(fd, value, 0)
    os.ftruncate(fd, len(value))


class FileLease(Lease):
    """An acquisition in the lock directory: the open, flock'ed lock file.

    ``note_write`` is a note to write just before the release or hand-over,
    while the file is still ours (``FileBackend.defer_note``).  After the
    release, ``successor`` holds the waiter announcement that was stored
    beside the lock (``fileboard``), or None.
    """

    __slots__ = ("fd", "path", "_fd_lock", "note_write", "successor")

    def __init__(self, backend: FileBackend, fd: int, path: str, name: str, token: str, value: bytes,
                 ttl: float) -> None:
        self.fd: int | None = fd
        self.path = path
        self._fd_lock = threading.Lock()
        self.note_write: Callable[[], None] | None = None
        self.successor: bytes | None = None
        super().__init__(backend, name, token, value, ttl)

    def _release(self) -> bool:
        """Write the deferred note and remove the file (still under our flock) if it is ours, then unlock
        and close.  A file that is no longer ours (broken, maybe taken again) keeps its holder's note."""
        with self._fd_lock:
            fd = self.fd
            if fd is None:
                return False
            write, self.note_write = self.note_write, None
            try:
                ours = same_file(fd, self.path)
                if ours:
                    self._write_note(write)
                    self.successor = read_want(want_path(self.path))
                    os.unlink(self.path)
            finally:
                try:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                finally:
                    # One line: ``self.fd`` names the descriptor until it is closed, so a release
                    # interrupted before the close is finished by the reaper, and never twice (two
                    # lines would let an interrupt fall between them: tests/test_interrupts.py).
                    # os.close returns None, which is what ``self.fd`` must become.
                    self.fd = os.close(fd)  # type: ignore[func-returns-value]
        return ours

    def rewrite_record(self, thread: threading.Thread, ttl: float) -> bool:
        """Write the deferred note, then record ``thread`` and lease ``ttl`` as the holder (a hand-over to
        that thread); False if the path no longer names our file."""
        with self._fd_lock:
            if self.fd is None or not same_file(self.fd, self.path):
                return False
            write, self.note_write = self.note_write, None
            self._write_note(write)
            value = encode_value(self.token, ttl, thread=thread)
            try:
                _write_value(self.fd, value)
            except OSError as exc:
                raise BackendUnavailable("cannot write lock file %s: %s" % (self.path, exc)) from exc
            self.value = value
            return True

    def _write_note(self, write: Callable[[], None] | None) -> None:
        if write is None:
            return
        try:
            write()
        except BackendUnavailable as exc:
            logger.warning("the note of lock %s could not be written (%s): the next holder asks the storage "
                           "or meets a ConflictError", self.name, exc)

    def _renew(self, ttl: float) -> bool:
        """Rewrite the expiry in the file, if the path still names our file."""
        with self._fd_lock:
            if self.fd is None:
                return False
            try:
                if not same_file(self.fd, self.path):
                    return False
                value = renewed_value(self.value, ttl)
                _write_value(self.fd, value)
            except OSError as exc:
                raise BackendUnavailable("cannot renew file lock %s: %s" % (self.path, exc)) from exc
            self.value = value
            return True

    def _forget(self) -> None:
        """In a forked child: close the inherited descriptor, never unlock it.

        The child's descriptor shares the parent's open file description, so
        ``LOCK_UN`` here would free the parent's lock; closing one of the two
        descriptors leaves the lock with the parent.
        """
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


class FileBackend(Backend):
    """Locks as flock'ed files in one directory (one host only)."""

    kind = "file"
    #: See ``base.CAPABILITIES``: leases never expire, one host only, the note is read apart.
    capabilities = frozenset(("commit_gate", "notes", "waiter_board", "note_with_release"))
    commit_gate: FileCommitGate

    def __init__(self, directory: str, create: bool = True) -> None:
        """``create=False`` (for inspection: ``list``, ``show``, ``break``) never makes the directory."""
        self.directory = prepare_lock_dir(directory, create)
        self.commit_gate = FileCommitGate(self)
        self._board = FileWaiterBoard(self)

    @property
    def waiter_board(self) -> FileWaiterBoard:
        return self._board

    @classmethod
    def from_settings(cls, settings: Settings, create: bool = True) -> FileBackend:
        return cls(settings.lock_dir, create)

    def __repr__(self) -> str:
        return "<FileBackend %s>" % self.directory

    def path_for(self, name: str) -> str:
        """The lock file of ``name`` (names from ``keys.lock_name`` are safe file names;
        the empty key's name is empty and its file is ``.lock``)."""
        if "/" in name or "\0" in name or len(name) > 200:
            raise ValueError("not a lock name from keys.lock_name: %r" % (name,))
        return os.path.join(self.directory, name + LOCK_SUFFIX)

    def _open(self, path: str) -> int:
        try:
            return open_regular(path, OPEN_FLAGS)
        except FileNotFoundError:
            # The directory was removed under us: make it again (checked), once.
            try:
                prepare_lock_dir(self.directory)
                return open_regular(path, OPEN_FLAGS)
            except ConfigurationError as exc:
                raise BackendUnavailable(str(exc)) from exc
            except OSError as exc:
                raise BackendUnavailable("cannot open lock file %s: %s" % (path, exc)) from exc
        except NotRegularFile:
            raise
        except OSError as exc:
            raise BackendUnavailable("cannot open lock file %s: %s" % (path, exc)) from exc

    def acquire(self, name: str, ttl: float, with_note: bool = False) -> FileLease | None:
        """One non-blocking attempt; None if somebody holds the lock (the note is read apart)."""
        path = self.path_for(name)
        fd: int | None
        for _ in range(_REOPEN_ATTEMPTS):
            fd = self._open(path)
            try:  # closes ``fd`` (and so drops its flock) on any way out until a FileLease owns it
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return None
                except OSError as exc:
                    raise BackendUnavailable("cannot lock %s: %s" % (path, exc)) from exc
                try:
                    if not same_file(fd, path):
                        # Its holder removed it on release after we opened it: the
                        # lock we got is on a dead inode.  Open the path again.
                        continue
                    token = new_token()
                    value = encode_value(token, ttl)
                    _write_value(fd, value)
                except OSError as exc:
                    raise BackendUnavailable("cannot write lock file %s: %s" % (path, exc)) from exc
                # One line, so no interrupt falls between the lease taking the fd and ``fd`` forgetting it.
                lease, fd = FileLease(self, fd, path, name, token, value, ttl), None
                return lease
            finally:
                if fd is not None:
                    os.close(fd)
        logger.debug("lock file %s kept changing under us; reporting it busy", path)
        return None

    def _inspect(self, name: str, path: str, clean: bool) -> Holder | None:
        """The holder recorded in ``path`` if its flock is held now; else None.

        With ``clean``, a file nobody holds (left by a crashed process) is
        removed, under its flock, only if the path still names it and the
        store made it.  Symlinks and non-regular files are skipped with a warning.
        """
        try:
            fd = open_regular(path, READ_FLAGS)
        except FileNotFoundError:
            return None
        except NotRegularFile as exc:
            logger.warning("skipping %s", exc)
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                logger.warning("skipping lock file %s: it is a symlink; remove it", path)
                return None
            raise BackendUnavailable("cannot read lock file %s: %s" % (path, exc)) from exc
        try:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if clean else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except BlockingIOError:
                return self._read_holder(fd, name)
            if clean and same_file(fd, path) and _made_by_us(fd):
                logger.debug("removing stale lock file %s", path)
                os.unlink(path)
            return None
        finally:
            os.close(fd)

    def _read_holder(self, fd: int, name: str) -> Holder:
        """Decode the holder's record; a holder still writing it shows as unknown."""
        for attempt in range(3):
            value = os.pread(fd, 4096, 0)
            holder = decode_value(name, value, self.kind) if value else None
            if holder is not None:
                return holder
            time.sleep(0.001 * (attempt + 1))
        return Holder(name=name, token="", host="?", pid=0, thread=0, thread_name="?",
                      acquired=0.0, expires=0.0, backend=self.kind)

    def holder(self, name: str, warn: Warn | None = None) -> Holder | None:
        return self._inspect(name, self.path_for(name), clean=False)

    def list_locks(self, warn: Warn | None = None) -> list[Holder]:
        """Every lock held now; files left by crashed holders are removed on the way."""
        holders: list[Holder] = []
        try:
            entries = os.listdir(self.directory)
        except FileNotFoundError:
            return holders
        except OSError as exc:
            raise BackendUnavailable("cannot list lock directory %s: %s" % (self.directory, exc)) from exc
        for entry in entries:
            if not entry.endswith(LOCK_SUFFIX):
                continue
            name = entry[: -len(LOCK_SUFFIX)]
            holder = self._inspect(name, os.path.join(self.directory, entry), clean=True)
            if holder is not None:
                holders.append(holder)
        holders.sort(key=lambda h: h.acquired)
        return holders

    def break_lock(self, name: str, token: str | None = None) -> bool:
        """Remove ``name``'s lock file; True if it was removed while somebody held it.

        With ``token``, only if the file still records that holder's token
        (compare-and-delete): a lock released and taken again since the
        caller looked is left alone.  The holder keeps a flock on a file
        nobody can open any more; its renewal and release find the path
        changed and report the lock lost.  Only files the store made are removed.
        """
        path = self.path_for(name)
        fd = open_to_read(path, "open lock file")
        if fd is None:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held = True
            else:
                held = False
            if token is not None:
                recorded = decode_value(name, os.pread(fd, 4096, 0))
                if not held or recorded is None or recorded.token != token:
                    return False
            if same_file(fd, path) and _made_by_us(fd):
                os.unlink(path)
                return held
            return False
        finally:
            os.close(fd)

    def _note_path(self, name: str) -> str:
        return self.path_for(name)[: -len(LOCK_SUFFIX)] + NOTE_SUFFIX

    def get_note(self, name: str) -> bytes | None:
        """The note, if it is a regular file written in the last NOTE_TTL seconds (never a symlink's target)."""
        return read_note(self._note_path(name))

    def remove_note(self, name: str) -> None:
        """Forget ``name``'s note (if the store wrote it: a regular file of this uid)."""
        remove_note(self._note_path(name), name)

    def set_note(self, name: str, value: bytes) -> None:
        """Write the note to a temporary file and rename it: readers never see half."""
        write_note(self.directory, self._note_path(name), _note_bytes(value))

    def defer_note(self, lease: Lease, value: bytes) -> bool:
        """Write ``value`` as ``lease``'s note in its release or hand-over, if the lock file is still its own."""
        if not isinstance(lease, FileLease) or lease.backend is not self:
            return False
        lease.note_write = functools.partial(write_note, self.directory, self._note_path(lease.name),
                                             _note_bytes(value))
        return True


def _note_bytes(value: object) -> bytes:
    """``value`` if it is bytes (checked when it is given, not when a release writes it)."""
    if not isinstance(value, bytes):
        raise TypeError("a note is bytes, not %s" % type(value).__name__)
    return value
