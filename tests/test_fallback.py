"""The default store: memcached first, the lock directory while memcached is unreachable.

Every test runs a real memcached of its own and kills, stops or restarts it.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import transaction
import ZODB
from ZODB.MappingStorage import MappingStorage

from unimr.memcachedlock import config, metrics, registry
from unimr.memcachedlock.backends.fallback import FallbackBackend
from unimr.memcachedlock.backends.file import FileLease
from unimr.memcachedlock.backends.memcached import MemcachedLease
from unimr.memcachedlock.decorators import lock
from unimr.memcachedlock.keys import lock_name
from unimr.memcachedlock.locks import Lock
from unimr.memcachedlock.zodb import lock_for_transaction
from unimr.memcachedlock.zodb.notes import decode_note

RETRY = 0.3


@pytest.fixture
def fallback(private_memcached, lock_dir, monkeypatch):
    """The fallback store over a private memcached, with short timeouts and retry."""
    monkeypatch.setenv("MEMCACHEDLOCK_BACKEND", "fallback")
    monkeypatch.setenv("MEMCACHEDLOCK_RETRY", str(RETRY))
    monkeypatch.setenv("MEMCACHEDLOCK_IO_TIMEOUT", "0.3")
    monkeypatch.setenv("MEMCACHEDLOCK_CONNECT_TIMEOUT", "0.3")
    registry.reset()
    backend = registry.get_backend()
    assert isinstance(backend, FallbackBackend)
    return backend


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and r.name.startswith("unimr.memcachedlock")]


def test_nothing_configured_means_memcached_with_file_fallback():
    settings = config.get_settings()
    assert settings.backend == "fallback"
    assert [str(s) for s in settings.servers] == ["127.0.0.1:11211"]
    backend = registry.get_backend()
    assert isinstance(backend, FallbackBackend)
    assert backend.kind == "fallback"
    assert backend.secondary.directory == os.path.abspath(config.default_lock_dir())


def test_memcached_up_uses_memcached(fallback):
    with Lock("up") as taken:
        assert isinstance(taken.lease, MemcachedLease)
        assert fallback.holder(taken.name).backend == "memcached"
    assert os.listdir(fallback.secondary.directory) == []


def test_dead_memcached_uses_files_with_one_warning(fallback, private_memcached, caplog):
    caplog.set_level(logging.DEBUG)
    metrics.reset()
    private_memcached.kill()
    calls = []

    @lock(lambda fun, n: "dead")
    def work(n):
        calls.append(n)
        return n

    started = time.monotonic()
    results = [work(i) for i in range(50)]
    assert results == list(range(50)) == calls
    assert time.monotonic() - started < 3
    with Lock("dead-2") as taken:
        assert isinstance(taken.lease, FileLease)
    assert len(warnings_of(caplog)) == 1, warnings_of(caplog)
    assert "unreachable" in warnings_of(caplog)[0]
    directory = registry.get_backend().secondary.directory
    assert "locking goes on in the lock directory %s" % directory in warnings_of(caplog)[0]
    fallbacks = sum(v.get("fallbacks", 0) for v in metrics.snapshot().values())
    assert fallbacks == 51


def test_return_to_memcached_when_it_answers(fallback, private_memcached, caplog):
    caplog.set_level(logging.INFO)
    private_memcached.kill()
    during = Lock("back")
    during.acquire()
    assert isinstance(during.lease, FileLease)
    private_memcached.start()
    time.sleep(RETRY + 0.05)
    after = Lock("other")
    after.acquire()
    assert isinstance(after.lease, MemcachedLease)
    after.release()
    # The lease taken during the outage stays in the lock directory and
    # keeps the name busy for memcached takers too.
    assert not Lock("back").acquire(blocking=False)
    file_lease = during.lease
    during.release()
    assert file_lease.released and not file_lease.lost
    assert fallback.secondary.holder(during.name) is None
    with Lock("back") as again:
        assert isinstance(again.lease, MemcachedLease)
    assert len(warnings_of(caplog)) == 1
    assert any("answers again" in r.getMessage() for r in caplog.records)


FILE_HOLDER = r"""
import sys, time
from unimr.memcachedlock.locks import Lock
from unimr.memcachedlock.zodb import lock_for_transaction
from unimr.memcachedlock.zodb.notes import decode_note
lock = Lock(sys.argv[1])
assert lock.acquire(timeout=5)
print(type(lock.lease).__name__, flush=True)
sys.stdin.readline()
lock.release()
print("released", flush=True)
"""


def test_file_lock_from_an_outage_blocks_memcached_takers(fallback, private_memcached, lock_dir):
    """A process that still holds a file lock (taken while memcached was away) keeps the name."""
    env = dict(os.environ, MEMCACHEDLOCK_BACKEND="file", MEMCACHEDLOCK_DIR=str(lock_dir))
    proc = subprocess.Popen([sys.executable, "-c", FILE_HOLDER, "seam"], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"FileLease"
        contender = Lock("seam")
        assert not contender.acquire(timeout=0.3)
        assert contender.locked()
        assert fallback.primary.holder(contender.name) is None
        proc.stdin.write(b"\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == b"released"
        assert contender.acquire(timeout=2)
        assert isinstance(contender.lease, MemcachedLease)
        contender.release()
    finally:
        proc.kill()
        proc.wait()


def test_hung_memcached_bounded_by_io_timeout(fallback, private_memcached, caplog):
    caplog.set_level(logging.INFO)
    private_memcached.stop()
    try:
        started = time.monotonic()
        with Lock("hung") as first:
            assert isinstance(first.lease, FileLease)
        first_wait = time.monotonic() - started
        # connect succeeds (the kernel accepts), the add and the check read time out
        assert first_wait < 0.3 * 2 + 0.5
        started = time.monotonic()
        for _ in range(20):
            with Lock("hung"):
                pass
        assert time.monotonic() - started < 1.0
        assert len(warnings_of(caplog)) == 1
    finally:
        private_memcached.cont()
    time.sleep(RETRY + 0.05)
    with Lock("hung") as after:
        assert isinstance(after.lease, MemcachedLease)


def test_release_all_covers_both_stores(fallback, private_memcached):
    in_memcached = fallback.acquire("a", 5)
    private_memcached.kill()
    in_files = fallback.acquire("b", 5)
    assert isinstance(in_memcached, MemcachedLease) and isinstance(in_files, FileLease)
    assert {type(x) for x in fallback.held_leases()} == {MemcachedLease, FileLease}
    assert fallback.release_all() == 1  # the memcached release is deferred: the server is gone
    assert in_memcached.released and in_files.released
    assert fallback.held_leases() == []


def test_inspection_spans_both_stores(fallback, private_memcached):
    up = Lock("inspect-up")
    up.acquire()
    private_memcached.kill()
    down = Lock("inspect-down")
    down.acquire()
    try:
        names = {h.name: h.backend for h in fallback.list_locks()}
        assert names == {"inspect-down": "file"}
        assert fallback.holder("inspect-down").pid == os.getpid()
        assert not fallback.may_be_available("inspect-down")
        assert fallback.may_be_available("inspect-up")
    finally:
        down.release()
        up.release()


def test_notes_survive_an_outage(fallback, private_memcached):
    fallback.set_note("catalog", b"tid-1")
    assert fallback.get_note("catalog") == b"tid-1"
    private_memcached.stop()
    try:
        fallback.set_note("catalog", b"tid-2")
        assert fallback.get_note("catalog") == b"tid-2"
    finally:
        private_memcached.cont()
    time.sleep(RETRY + 0.05)
    # memcached still has the older note: the directory's newer one wins
    assert fallback.get_note("catalog") == b"tid-2"
    fallback.set_note("catalog", b"tid-3")
    assert fallback.get_note("catalog") == b"tid-3"
    assert fallback.secondary.get_note("catalog") is None


def test_memcached_holder_of_this_process_is_respected_during_outage(fallback, private_memcached):
    holder = Lock("kept")
    holder.acquire()
    assert isinstance(holder.lease, MemcachedLease)
    private_memcached.kill()
    assert not Lock("kept").acquire(timeout=0.2)
    holder.release()
    with Lock("kept") as taken:
        assert isinstance(taken.lease, FileLease)


def test_threads_keep_running_through_an_outage(fallback, private_memcached):
    errors = []
    done = [0]
    stop = time.monotonic() + 2.0
    guard = threading.Lock()
    inside = [0]

    @lock(lambda fun: "outage-threads", timeout=5)
    def work():
        inside[0] += 1
        if inside[0] != 1:
            errors.append("overlap")
        time.sleep(0.001)
        inside[0] -= 1

    def run():
        while time.monotonic() < stop:
            try:
                work()
                with guard:
                    done[0] += 1
            except Exception as exc:
                errors.append(repr(exc))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    private_memcached.kill()
    time.sleep(0.7)
    private_memcached.start()
    for t in threads:
        t.join(20)
    assert errors == []
    assert done[0] > 50


def _commit_under_zlock(database, key: str, before_commit=None) -> bytes:
    """Commit one change under zlock ``key`` (policy always) on ``database``; its tid."""
    conn = database.open()
    try:
        transaction.begin()
        assert lock_for_transaction(key, policy="always") is True
        conn.root()["n"] = conn.root().get("n", 0) + 1
        if before_commit is not None:
            before_commit()
        transaction.commit()
        return database.lastTransaction()
    finally:
        transaction.abort()
        conn.close()


def _recorded(fallback, database, key: str) -> bytes | None:
    return decode_note(fallback.get_note(lock_name(key))).get(storage_identity_of(database))


def storage_identity_of(database) -> str:
    return "local:%s:%d:%x" % (socket.gethostname(), os.getpid(), id(database.storage))


def test_a_note_memcached_cannot_take_at_the_release_goes_to_the_lock_directory(fallback, private_memcached):
    """The note rides on the release; memcached stopped before it: the lock directory keeps it."""
    database = ZODB.DB(MappingStorage())
    try:
        _commit_under_zlock(database, "noted")
        stopped = []
        try:
            tid = _commit_under_zlock(database, "noted",
                                      before_commit=lambda: stopped.append(private_memcached.stop()))
            assert stopped
            assert fallback.secondary.get_note(lock_name("noted")) is not None
            assert _recorded(fallback, database, "noted") == tid
        finally:
            private_memcached.cont()
    finally:
        database.close()


def test_a_locked_commit_in_memcached_replaces_the_note_of_an_outage(fallback, private_memcached):
    """A note left in the lock directory by an outage is newer than memcached's until a note reaches memcached:
    the next commit stores its note there (not with the release) and removes the directory's."""
    database = ZODB.DB(MappingStorage())
    try:
        fallback.secondary.set_note(lock_name("noted"), b" old=0000000000000001")
        tid = _commit_under_zlock(database, "noted")
        assert fallback.secondary.get_note(lock_name("noted")) is None
        assert _recorded(fallback, database, "noted") == tid
        assert fallback.primary.get_note(lock_name("noted")) == fallback.get_note(lock_name("noted"))
    finally:
        database.close()
