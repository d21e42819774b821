"""The file store against a hostile lock directory.

The tests run as root, so "another user" is made with ``os.chown`` to uid
65534; FIFOs and symlinks are planted with ``os.mkfifo`` and ``os.symlink``.
Calls that used to hang run in a thread joined with a bound.
"""

from __future__ import annotations

import os
import stat
import threading

import pytest

from unimr.memcachedlock.backends.file import FileBackend
from unimr.memcachedlock.errors import BackendUnavailable, ConfigurationError
from unimr.memcachedlock.keys import lock_name

OTHER_UID = 65534


def bounded(fn, seconds: float = 5.0):
    """Run ``fn`` in a thread; fail if it does not return within ``seconds``; return or raise its outcome."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the test below
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail("%r hung for %.0fs" % (fn, seconds))
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@pytest.fixture
def private_dir(tmp_path):
    path = tmp_path / "locks"
    path.mkdir(mode=0o700)
    return path


def test_directory_of_another_user_is_refused_naming_it(private_dir):
    os.chown(private_dir, OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigurationError) as info:
        FileBackend(str(private_dir))
    assert str(private_dir) in str(info.value) and "a directory of your own" in str(info.value)


def test_directory_writable_by_others_is_refused_with_the_fix(private_dir):
    os.chmod(private_dir, 0o777)
    with pytest.raises(ConfigurationError) as info:
        FileBackend(str(private_dir))
    assert str(private_dir) in str(info.value) and "chmod go-w" in str(info.value)


def test_symlinked_directory_is_refused(private_dir, tmp_path):
    link = tmp_path / "link"
    os.symlink(private_dir, link)
    with pytest.raises(ConfigurationError, match="symlink"):
        FileBackend(str(link))


def test_default_directory_is_created_private(tmp_path, monkeypatch):
    import tempfile

    from unimr.memcachedlock.config import default_lock_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    store = FileBackend(default_lock_dir())
    info = os.lstat(store.directory)
    assert store.directory == str(tmp_path / ("unimr.memcachedlock-%d" % os.getuid()))
    assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.geteuid()


def test_fifo_as_lock_file_neither_hangs_acquire_nor_list(private_dir):
    store = FileBackend(str(private_dir))
    fifo = private_dir / (lock_name("site:fifo") + ".lock")
    os.mkfifo(fifo)
    held = store.acquire(lock_name("site:real"), 30)
    try:
        with pytest.raises(BackendUnavailable, match="not a regular file"):
            bounded(lambda: store.acquire(lock_name("site:fifo"), 30))
        assert bounded(lambda: store.holder(lock_name("site:fifo"))) is None
        listed = bounded(store.list_locks)
        assert [h.name for h in listed] == [lock_name("site:real")]
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the store must not remove what it did not make"
    finally:
        held.release()


def test_fifo_as_note_does_not_hang_the_note_read(private_dir):
    store = FileBackend(str(private_dir))
    os.mkfifo(private_dir / (lock_name("site:noted") + ".note"))
    with pytest.raises(BackendUnavailable, match="not a regular file"):
        bounded(lambda: store.get_note(lock_name("site:noted")))


def test_symlinked_note_is_not_read(private_dir, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"root:secret-hash")
    store = FileBackend(str(private_dir))
    os.symlink(secret, private_dir / (lock_name("site:noted") + ".note"))
    with pytest.raises(BackendUnavailable):
        store.get_note(lock_name("site:noted"))
    with pytest.raises(BackendUnavailable):
        store.remove_note(lock_name("site:noted"))
    assert secret.read_bytes() == b"root:secret-hash"


def test_list_never_removes_files_the_store_did_not_make(private_dir, tmp_path):
    store = FileBackend(str(private_dir))
    foreign_owner = private_dir / "foreign-owner.lock"
    foreign_owner.write_bytes(b"mcl1 abc")
    os.chown(foreign_owner, OTHER_UID, OTHER_UID)
    foreign_content = private_dir / "foreign-content.lock"
    foreign_content.write_bytes(b"somebody else's data")
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep me")
    os.link(target, private_dir / "hardlinked.lock")
    os.symlink(target, private_dir / "symlinked.lock")
    assert store.list_locks() == []
    for name in ("foreign-owner", "foreign-content", "hardlinked", "symlinked"):
        assert os.path.lexists(private_dir / (name + ".lock")), name
    assert store.break_lock("foreign-content") is False and foreign_content.exists()
    assert target.read_bytes() == b"keep me"


def test_stale_lock_file_of_our_own_is_still_cleaned(private_dir):
    """What a crashed holder leaves (our record, nobody's flock) is still removed by ``list``."""
    from unimr.memcachedlock.backends.records import encode_value

    store = FileBackend(str(private_dir))
    stale = private_dir / "stale.lock"
    stale.write_bytes(encode_value("0123456789abcdef", 30))
    stale.chmod(0o600)
    assert store.list_locks() == []
    assert not stale.exists()


@pytest.mark.parametrize("planted", ["fifo", "symlink"])
def test_a_planted_announcement_file_neither_hangs_nor_stops_the_lock(private_dir, tmp_path, planted):
    """A FIFO or a symlink where a waiter announces itself (``<lock>.want``): the waiter is not
    announced, but polls and gets the lock once it is released; the symlink's target is untouched."""
    from unimr.memcachedlock.locks import Lock

    secret = tmp_path / "secret"
    secret.write_bytes(b"root:secret-hash")
    store = FileBackend(str(private_dir))
    name = lock_name("site:wanted")
    want = private_dir / (name + ".want")
    if planted == "fifo":
        os.mkfifo(want)
    else:
        os.symlink(secret, want)
    holder = store.acquire(name, 30)
    board = store.waiter_board
    assert bounded(lambda: board.peek_want(name)) == (True, None, None)
    with pytest.raises(BackendUnavailable):
        bounded(lambda: board.put_want(name, b"an announcement", None, add=True))
    got = []
    lock = Lock("site:wanted", backend=store)
    waiter = threading.Thread(target=lambda: got.append(lock.acquire(timeout=5)))
    waiter.start()
    threading.Timer(0.2, holder.release).start()
    waiter.join(10)
    assert got == [True]
    lock.release()
    assert secret.read_bytes() == b"root:secret-hash"
    assert stat.S_ISFIFO(os.lstat(want).st_mode) if planted == "fifo" else os.path.islink(want)
