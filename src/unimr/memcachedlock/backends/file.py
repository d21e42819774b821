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
* The holder writes its description (``info.encode_value``: token, host,
  pid, thread, since, expiry) into the file, which is what ``holder()`` and
  ``list_locks()`` read; renewal rewrites the expiry.

A file lock does not expire while its holder's process lives: the lease is
recorded and renewed for inspection, but only the holder's release, its
death or ``break_lock`` frees it.  Stealing a live holder's flock is not
possible, and guessing that it is stuck would risk two writers.

The directory (``Settings.lock_dir``) is created with mode 0700 if missing.
A directory that cannot be created or written is a ConfigurationError raised
when the store is built, i.e. on the first use of a lock; if it disappears
or fills up later, ``acquire`` raises BackendUnavailable.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time

from ..config import Settings
from ..errors import BackendUnavailable, ConfigurationError
from ..info import Holder, decode_value, encode_value, new_token, renewed_value
from ..lease import Lease
from .base import Backend

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
NOTE_SUFFIX = ".note"
NOTE_TTL = 86400
#: Attempts to lock a path whose file is being removed and recreated by others.
_REOPEN_ATTEMPTS = 8

_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW


def prepare_lock_dir(path: str) -> str:
    """Create ``path`` (mode 0700) if needed and check it is a writable directory.

    Returns the absolute path; raises ConfigurationError naming the directory.
    """
    path = os.path.abspath(path)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            "cannot create lock directory %r (MEMCACHEDLOCK_DIR): %s" % (path, exc.strerror or exc)
        ) from exc
    if not os.path.isdir(path):
        raise ConfigurationError("lock directory %r (MEMCACHEDLOCK_DIR) is not a directory" % path)
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigurationError(
            "lock directory %r (MEMCACHEDLOCK_DIR) is not writable by uid %d" % (path, os.geteuid())
        )
    return path


def _same_file(fd: int, path: str) -> bool:
    """True if ``path`` still names the inode open as ``fd``."""
    try:
        on_disk = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _write_value(fd: int, value: bytes) -> None:
    os.pwrite(fd, value, 0)
    os.ftruncate(fd, len(value))


class FileLease(Lease):
    """An acquisition in the lock directory: the open, flock'ed lock file."""

    __slots__ = ("fd", "path", "_fd_lock")

    def __init__(self, backend, fd: int, path: str, name: str, token: str, value: bytes, ttl: float) -> None:
        self.fd: int | None = fd
        self.path = path
        self._fd_lock = threading.Lock()
        super().__init__(backend, name, token, value, ttl)

    def _release(self) -> bool:
        """Remove the file (still under our flock) if it is ours, then unlock and close."""
        with self._fd_lock:
            fd = self.fd
            if fd is None:
                return False
            try:
                ours = _same_file(fd, self.path)
                if ours:
                    os.unlink(self.path)
            finally:
                try:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                finally:
                    # One line: ``self.fd`` names the descriptor until it is closed, so a release
                    # interrupted before the close is finished by the reaper, and never twice.
                    self.fd = os.close(fd)
        return ours

    def _renew(self, ttl: float) -> bool:
        """Rewrite the expiry in the file, if the path still names our file."""
        with self._fd_lock:
            if self.fd is None:
                return False
            try:
                if not _same_file(self.fd, self.path):
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

    def __init__(self, directory: str) -> None:
        self.directory = prepare_lock_dir(directory)

    @classmethod
    def from_settings(cls, settings: Settings) -> "FileBackend":
        return cls(settings.lock_dir)

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
            return os.open(path, _OPEN_FLAGS, 0o600)
        except FileNotFoundError:
            # The directory was removed under us: make it again, once.
            try:
                os.makedirs(self.directory, mode=0o700, exist_ok=True)
                return os.open(path, _OPEN_FLAGS, 0o600)
            except OSError as exc:
                raise BackendUnavailable("cannot open lock file %s: %s" % (path, exc)) from exc
        except OSError as exc:
            raise BackendUnavailable("cannot open lock file %s: %s" % (path, exc)) from exc

    def acquire(self, name: str, ttl: float) -> FileLease | None:
        """One non-blocking attempt; None if somebody holds the lock."""
        path = self.path_for(name)
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
                    if not _same_file(fd, path):
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
        removed, under its flock and only if the path still names it.
        """
        try:
            fd = os.open(path, _READ_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackendUnavailable("cannot read lock file %s: %s" % (path, exc)) from exc
        try:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if clean else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except BlockingIOError:
                return self._read_holder(fd, name)
            if clean and _same_file(fd, path):
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

    def holder(self, name: str) -> Holder | None:
        return self._inspect(name, self.path_for(name), clean=False)

    def may_be_available(self, name: str) -> bool:
        return self.holder(name) is None

    def is_held(self, name: str) -> bool:
        """True if somebody holds ``name`` here; costs one failed ``open`` when the file is absent."""
        return self.holder(name) is not None

    def list_locks(self) -> list[Holder]:
        """Every lock held now; files left by crashed holders are removed on the way."""
        holders = []
        try:
            entries = os.listdir(self.directory)
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

    def break_lock(self, name: str) -> bool:
        """Remove ``name``'s lock file whoever holds it; True if somebody held it.

        The holder keeps a flock on a file nobody can open any more; its
        renewal and release find the path changed and report the lock lost.
        """
        path = self.path_for(name)
        try:
            fd = os.open(path, _READ_FLAGS)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held = True
            else:
                held = False
            if _same_file(fd, path):
                os.unlink(path)
            return held
        finally:
            os.close(fd)

    def _note_path(self, name: str) -> str:
        return self.path_for(name)[: -len(LOCK_SUFFIX)] + NOTE_SUFFIX

    def get_note(self, name: str) -> bytes | None:
        path = self._note_path(name)
        try:
            with open(path, "rb") as f:
                if time.time() - os.fstat(f.fileno()).st_mtime > NOTE_TTL:
                    return None
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackendUnavailable("cannot read note %s: %s" % (path, exc)) from exc

    def remove_note(self, name: str) -> None:
        """Forget ``name``'s note (the fallback store does when memcached has a newer one)."""
        try:
            os.unlink(self._note_path(name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise BackendUnavailable("cannot remove note of %s: %s" % (name, exc)) from exc

    def set_note(self, name: str, value: bytes) -> None:
        """Write the note to a temporary file and rename it: readers never see half."""
        if not isinstance(value, bytes):
            raise TypeError("a note is bytes, not %s" % type(value).__name__)
        path = self._note_path(name)
        tmp = "%s.%d.%s.tmp" % (path, os.getpid(), os.urandom(4).hex())
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                os.makedirs(self.directory, mode=0o700, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, value)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise BackendUnavailable("cannot write note %s: %s" % (path, exc)) from exc
