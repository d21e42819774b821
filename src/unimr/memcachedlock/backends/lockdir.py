"""The lock directory: checked, private, and opened without trusting what is in it.

Shared by the file store (``file.py``) and its commit gate (``filegate.py``):
the directory's checks, opening a path only if it is a regular file (never
following a symlink, never blocking on a FIFO), and the notes beside the
lock files.  See ``file.py`` for why each of these matters.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time

from ..config import absolute_directory
from ..errors import BackendUnavailable, ConfigurationError

LOCK_SUFFIX = ".lock"
NOTE_SUFFIX = ".note"
NOTE_TTL = 86400

OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


class NotRegularFile(BackendUnavailable):
    """A path in the lock directory is not a regular file (a FIFO, a device, a directory)."""


def check_lock_dir(path: str) -> None:
    """Refuse a lock directory others could tamper with; ConfigurationError names it and the fix.

    It must be a directory, not a symlink, owned by this uid and not writable
    by group or others.
    """
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise ConfigurationError(
            "cannot use lock directory %r (MEMCACHEDLOCK_DIR): %s" % (path, exc.strerror or exc)) from exc
    if stat.S_ISLNK(info.st_mode):
        raise ConfigurationError(
            "lock directory %r (MEMCACHEDLOCK_DIR) is a symlink: point MEMCACHEDLOCK_DIR at the real "
            "directory" % path)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigurationError("lock directory %r (MEMCACHEDLOCK_DIR) is not a directory" % path)
    uid = os.geteuid()
    if info.st_uid != uid:
        raise ConfigurationError(
            "lock directory %r (MEMCACHEDLOCK_DIR) belongs to uid %d, not to this process's uid %d: "
            "another user could remove lock files under a live holder; remove it or set "
            "MEMCACHEDLOCK_DIR to a directory of your own" % (path, info.st_uid, uid))
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigurationError(
            "lock directory %r (MEMCACHEDLOCK_DIR) is writable by group or others (mode %04o): "
            "run chmod go-w %s" % (path, stat.S_IMODE(info.st_mode), path))


def prepare_lock_dir(path: str, create: bool = True) -> str:
    """Create ``path`` (mode 0700) if needed and check it is private and writable.

    Returns the normalized path; raises ConfigurationError naming the directory.
    A relative path is refused, as in the settings: resolved in each process's
    own working directory, it would give two processes two lock directories.
    With ``create=False`` a missing directory is left missing (nothing is
    locked there) and an existing one is checked.
    """
    path = os.path.normpath(absolute_directory("MEMCACHEDLOCK_DIR", path))
    if not os.path.lexists(path):
        if not create:
            return path
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                "cannot create lock directory %r (MEMCACHEDLOCK_DIR): %s" % (path, exc.strerror or exc)
            ) from exc
    check_lock_dir(path)
    if create and not os.access(path, os.W_OK | os.X_OK):
        raise ConfigurationError(
            "lock directory %r (MEMCACHEDLOCK_DIR) is not writable by uid %d" % (path, os.geteuid())
        )
    return path


def open_regular(path: str, flags: int, mode: int = 0o600) -> int:
    """Open ``path`` without following a symlink or blocking; NotRegularFile unless it is a regular file."""
    fd = os.open(path, flags, mode)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile("%s is not a regular file: the lock store does not use it; remove it" % path)
        return fd  # inside the try: an interrupt before the return closes the descriptor
    except BaseException:
        os.close(fd)
        raise


def open_to_read(path: str, what: str) -> int | None:
    """``path`` opened for reading (see ``open_regular``), None if it does not exist.

    Any other failure is BackendUnavailable, "cannot <what> <path>: <why>".
    """
    try:
        return open_regular(path, READ_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BackendUnavailable("cannot %s %s: %s" % (what, path, exc)) from exc


def same_file(fd: int, path: str) -> bool:
    """True if ``path`` still names the inode open as ``fd``."""
    try:
        on_disk = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


# -- notes: one small file beside the lock file ------------------------------------------


def read_note(path: str) -> bytes | None:
    fd = open_to_read(path, "read note")
    if fd is None:
        return None
    try:
        if time.time() - os.fstat(fd).st_mtime > NOTE_TTL:
            return None
        return os.pread(fd, 65536, 0)
    except OSError as exc:
        raise BackendUnavailable("cannot read note %s: %s" % (path, exc)) from exc
    finally:
        os.close(fd)


def remove_note(path: str, name: str) -> None:
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            raise NotRegularFile("note %s was not written by the lock store: remove it" % path)
        os.unlink(path)
    except FileNotFoundError:
        pass
    except NotRegularFile:
        raise
    except OSError as exc:
        raise BackendUnavailable("cannot remove note of %s: %s" % (name, exc)) from exc


def write_note(directory: str, path: str, value: bytes) -> None:
    tmp = "%s.%d.%s.tmp" % (path, os.getpid(), os.urandom(4).hex())
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            try:
                prepare_lock_dir(directory)
            except ConfigurationError as exc:
                raise BackendUnavailable(str(exc)) from exc
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, value)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise BackendUnavailable("cannot write note %s: %s" % (path, exc)) from exc
