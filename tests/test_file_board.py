"""The file store's waiter board (``<name>.want``) and the notes its leases write, on real files.

The turns it gives between processes are tested with real processes in
``test_waiting`` and ``test_zlock_zeo`` (every store with a board); here are
the board's own rules: compare-and-swap, expiry, withdrawal, a board held by
somebody else, and a lease that lost its lock file.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time

import pytest

from unimr.memcachedlock.backends import records
from unimr.memcachedlock.backends.file import FileBackend
from unimr.memcachedlock.errors import BackendUnavailable
from unimr.memcachedlock.keys import lock_name

NAME = lock_name("site:board")


@pytest.fixture
def file_store(tmp_path) -> FileBackend:
    return FileBackend(str(tmp_path / "locks"))


def announcement(token: str = "a" * 16) -> bytes:
    return records.Want(token, records.WANT_HOST, os.getpid(), time.time(), 0.01, b"\0nobody").encode()


def test_an_announcement_is_added_once_replaced_by_its_cas_and_withdrawn_by_its_token(file_store):
    board = file_store.waiter_board
    first, second = announcement("1" * 16), announcement("2" * 16)
    assert board.peek_want(NAME) == (False, None, None)
    assert board.put_want(NAME, first, None, add=True)
    assert not board.put_want(NAME, second, None, add=True)  # the slot is taken
    held, want, cas = board.peek_want(NAME)
    assert not held and want.token == "1" * 16 and cas == first
    assert not board.put_want(NAME, second, b"another cas", add=False)
    assert board.put_want(NAME, second, cas, add=False)
    assert not board.drop_want(NAME, "1" * 16)  # no longer its announcement
    assert board.drop_want(NAME, "2" * 16)
    assert board.peek_want(NAME) == (False, None, None)
    assert os.listdir(file_store.directory) == []
    assert not board.drop_want(NAME, "2" * 16)


def test_an_announcement_older_than_its_ttl_counts_as_absent(file_store):
    board = file_store.waiter_board
    assert board.put_want(NAME, announcement("1" * 16), None, add=True)
    path = os.path.join(file_store.directory, NAME + ".want")
    past = time.time() - records.WANT_TTL - 1
    os.utime(path, (past, past))
    assert board.peek_want(NAME) == (False, None, None)
    assert board.put_want(NAME, announcement("2" * 16), None, add=True)
    assert board.peek_want(NAME)[1].token == "2" * 16


def test_a_board_locked_by_somebody_else_is_unavailable_within_a_bound(file_store):
    """Another process keeping the announcement file's flock (held for microseconds by the file_store)
    makes writes BackendUnavailable after at most about 20 ms, and reads see no announcement."""
    board = file_store.waiter_board
    assert board.put_want(NAME, announcement(), None, add=True)
    fd = os.open(os.path.join(file_store.directory, NAME + ".want"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="stayed locked"):
            board.put_want(NAME, announcement("2" * 16), None, add=False)
        with pytest.raises(BackendUnavailable, match="stayed locked"):
            board.drop_want(NAME, "a" * 16)
        assert board.peek_want(NAME) == (False, None, None)
        assert time.monotonic() - started < 1.0
    finally:
        os.close(fd)
    assert board.drop_want(NAME, "a" * 16)


def test_the_release_reads_the_announcement_and_a_hand_over_rewrites_the_holder(file_store):
    board = file_store.waiter_board
    lease = file_store.acquire(NAME, 30)
    assert board.peek_want(NAME) == (True, None, None)
    assert board.put_want(NAME, announcement(), None, add=True)
    thread = threading.Thread(target=lambda: None, name="receiver")
    want = board.hand_record_over(lease, thread, 12)
    assert want.token == "a" * 16
    holder = file_store.holder(NAME)
    assert holder.token == lease.token and holder.thread_name == "receiver"
    assert lease.release()
    assert records.Want.decode(lease.successor).token == "a" * 16


def test_a_lease_that_lost_its_file_is_not_handed_over_and_keeps_its_note_to_itself(file_store, caplog):
    board = file_store.waiter_board
    lease = file_store.acquire(NAME, 30)
    assert file_store.defer_note(lease, b"the broken holder's note")
    assert file_store.break_lock(NAME)
    other = file_store.acquire(NAME, 30)
    file_store.set_note(NAME, b"the new holder's note")
    assert board.hand_record_over(lease, threading.current_thread(), 12) is False
    assert lease.release() is False
    assert file_store.get_note(NAME) == b"the new holder's note"
    assert board.hand_record_over(other, threading.current_thread(), 12) is None
    assert other.release()
    assert board.hand_record_over(other, threading.current_thread(), 12) is False  # released: nothing to rewrite


def test_a_note_that_cannot_be_written_is_said_once_and_the_lock_is_still_released(file_store, caplog):
    caplog.set_level(logging.WARNING)
    os.mkdir(os.path.join(file_store.directory, NAME + ".note"))  # the note's rename fails
    lease = file_store.acquire(NAME, 30)
    assert file_store.defer_note(lease, b"a note")
    with pytest.raises(TypeError, match="a note is bytes, not str"):
        file_store.defer_note(lease, "not bytes")
    assert lease.release()
    assert file_store.holder(NAME) is None
    assert [r.getMessage() for r in caplog.records if "could not be written" in r.getMessage()] != []


def test_a_note_is_deferred_only_for_the_stores_own_leases(file_store, tmp_path):
    other_store = FileBackend(str(tmp_path / "elsewhere"))
    lease = other_store.acquire(NAME, 30)
    try:
        assert file_store.defer_note(lease, b"a note") is False
        assert file_store.waiter_board.hand_record_over(lease, threading.current_thread(), 12) is False
    finally:
        lease.release()
