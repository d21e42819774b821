"""zlock on a real ZODB (MappingStorage / FileStorage) with threads, on every lock store.

Covers the API (LockBusy, keyword checks), every way a transaction ends,
reentrancy, reservations and their adoption, the fresh-view check and the
behaviour outside a transaction.  The ZEO tests with client processes are in
test_zlock_zeo.py.
"""

from __future__ import annotations

import os
import pickle
import socket
import threading
import time

import pytest
import transaction
import ZODB
from persistent.mapping import PersistentMapping
from transaction.interfaces import TransientError
from ZODB.FileStorage import FileStorage
from ZODB.MappingStorage import MappingStorage
from ZODB.POSException import ConflictError

from unimr.memcachedlock import InvalidArgument, Lock, MemcachedLockError, get_backend, memcachedlock, waiting
from unimr.memcachedlock import transactionlock as zlock_module
from unimr.memcachedlock.decorators import function_prefix
from unimr.memcachedlock.keys import lock_name
from unimr.memcachedlock.zodb import LockBusy, holding, lock_for_transaction, storage_identity, zlock
from unimr.memcachedlock.zodb.notes import MAX_NOTE_ENTRIES, decode_note, encode_note, merge_note

from overlap import OverlapLog

HOT = "hot-object"


def take_and_watch(key=HOT) -> list:
    """Take ``key`` for the transaction; the returned list gets, from after-commit and
    after-abort hooks that run after zlock's own, whether the lock was free then (while
    the transaction still references it: not freed later by garbage collection)."""
    assert lock_for_transaction(key) is True
    seen: list = []
    txn = transaction.get()
    txn.addAfterCommitHook(lambda ok: seen.append(("commit", ok, holder(key) is None)))
    txn.addAfterAbortHook(lambda: seen.append(("abort", holder(key) is None)))
    return seen


def holder(key=HOT):
    """Who holds ``key`` in the store now (None: free)."""
    return get_backend().holder(lock_name(key))


def note(db, key=HOT) -> bytes | None:
    """The tid recorded with ``key`` for ``db``'s storage (keyed by its identity, not the db name)."""
    ident = "local:%s:%d:%x" % (socket.gethostname(), os.getpid(), id(db.storage))
    return decode_note(get_backend().get_note(lock_name(key))).get(ident)


@pytest.fixture
def db(store):
    """A real in-memory ZODB with a counter; the thread's transaction is clean before and after."""
    transaction.abort()
    database = ZODB.DB(MappingStorage())
    with database.transaction() as conn:
        conn.root()["counter"] = PersistentMapping(value=0)
    yield database
    transaction.abort()
    database.close()


@pytest.fixture
def conn(db):
    connection = db.open()
    yield connection
    transaction.abort()
    connection.close()


def bump(connection) -> None:
    counter = connection.root()["counter"]
    counter["value"] += 1


def test_lock_busy_is_a_conflict_error_naming_the_key():
    error = LockBusy(message="lock 'catalog' is busy", key="catalog")
    assert isinstance(error, ConflictError)
    assert isinstance(error, TransientError)
    assert isinstance(error, MemcachedLockError)
    assert "catalog" in str(error)
    assert error.key == "catalog"
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error)


def test_package_exports_zlock_on_both_import_paths():
    import unimr.memcachedlock as package

    assert package.zlock is zlock is memcachedlock.zlock
    assert zlock_module.LockBusy is LockBusy


@pytest.mark.parametrize(
    "kw, error, text",
    [
        (dict(timeout=0), InvalidArgument, "0"),
        (dict(timeout=-3), InvalidArgument, "-3"),
        (dict(interval="fast"), InvalidArgument, "fast"),
        (dict(wait=float("nan")), InvalidArgument, "nan"),
        (dict(tiemout=3), TypeError, "tiemout"),
    ],
)
def test_bad_options_are_refused_at_decoration_naming_the_value(kw, error, text):
    with pytest.raises(error, match=text):
        zlock(lambda fun: "k", **kw)
    with pytest.raises((error, TypeError), match=text):
        lock_for_transaction("k", **kw)


def test_commit_releases_and_records_the_tid(db, conn):
    transaction.begin()
    seen = take_and_watch()
    mine = holder()
    assert mine is not None and mine.thread == threading.get_ident()
    bump(conn)
    transaction.commit()
    assert seen == [("commit", True, True)]
    assert holder() is None
    assert note(db) == db.lastTransaction()


@pytest.mark.needs("note_with_acquire")  # counts memcached round trips that carry the note
@pytest.mark.parametrize("policy, trips", [("always", 2), ("adaptive", 2), ("on-conflict", 2)])
def test_store_round_trips_of_a_transaction(db, conn, policy, trips, monkeypatch):
    """Always (and adaptive, which starts locking): the acquisition, which reads the gate and the note
    too, and the release, which writes the note first.  On-conflict: enter and leave the gate.

    Counted once the key has a note (its first holder also asks the server's uptime: see memcachedgate).
    """
    from unimr.memcachedlock.backends import memcached as memcached_backend

    with transaction.manager:
        lock_for_transaction(HOT)
        bump(conn)
    calls: list = []
    call_now = memcached_backend.MemcachedServer.call_now

    def counted(server, method, *args, **kw):
        calls.append(method.__name__)
        return call_now(server, method, *args, **kw)

    monkeypatch.setattr(memcached_backend.MemcachedServer, "call_now", counted)
    transaction.begin()
    assert lock_for_transaction(HOT, policy=policy) is True
    bump(conn)
    assert lock_for_transaction(HOT, policy=policy) is True
    transaction.commit()
    assert len(calls) == trips, calls
    assert holder() is None and note(db) == db.lastTransaction()


def test_the_note_is_stored_before_the_lock_is_free_when_the_release_cannot_carry_it(db, conn, monkeypatch):
    """A renewal drops the acquisition's cas, so the release compares the token instead: the next
    holder still reads the note of this commit."""
    _note_before_the_lock_is_free(db, conn, "renewed", monkeypatch)


@pytest.mark.needs("waiter_board")  # a release hands the lock to a waiting thread
def test_the_note_is_stored_before_a_hand_over(db, conn, monkeypatch):
    """A hand-over to a waiting thread rewrites the lock instead of freeing it: the next holder
    reads the note of this commit.

    The hand-over needs the connection that stored the lock, which the waiter's poll may be using at
    that moment; then the lock is released as usual (also checked).  Five tries make a run without
    one hand-over as unlikely as five such collisions in a row."""
    _note_before_the_lock_is_free(db, conn, "handed over", monkeypatch)


def _note_before_the_lock_is_free(db, conn, how: str, monkeypatch) -> None:
    """Commit under the lock while it is ``how`` ("renewed", "handed over"); the note is there."""
    board = type(get_backend().waiter_board)
    handed: list = []
    hand_record_over = board.hand_record_over
    monkeypatch.setattr(board, "hand_record_over",
                        lambda self, *args: handed.append(hand_record_over(self, *args)) or handed[-1])
    for _ in range(5 if how == "handed over" else 1):
        _commit_under_the_lock(db, conn, how, handed)
        if handed and handed[-1] is not False:
            break
    assert handed[-1] is not False if how == "handed over" else handed == []


def _commit_under_the_lock(db, conn, how: str, handed: list) -> None:
    transaction.begin()
    assert lock_for_transaction(HOT, policy="always") is True
    entry = holding.locks_of(transaction.get()).held[lock_name(HOT)]
    got = []
    other = Lock(HOT)
    if how == "renewed":
        assert entry.lease.renew(30)
    else:
        waiter = threading.Thread(target=lambda: got.append(other.acquire(timeout=10)))
        waiter.start()
        deadline = time.monotonic() + 5
        while not waiting.must_queue(get_backend(), lock_name(HOT)) and time.monotonic() < deadline:
            time.sleep(0.005)
    tries = len(handed)
    bump(conn)
    transaction.commit()
    if how == "handed over":
        waiter.join(10)
        assert got == [True] and holder() is not None and len(handed) == tries + 1
        assert note(db) == db.lastTransaction()  # what the thread handed the lock reads
        other.release()
    else:
        assert holder() is None
    assert note(db) == db.lastTransaction()


def test_a_holder_that_lost_its_lock_does_not_overwrite_the_next_holders_note(db, conn):
    """After a renewal the release compares the token: if another holder took the lock meanwhile
    (the lease was broken), this commit's note is not written over the other holder's."""
    transaction.begin()
    assert lock_for_transaction(HOT, policy="always") is True
    entry = holding.locks_of(transaction.get()).held[lock_name(HOT)]
    assert entry.lease.renew(30)
    backend = get_backend()
    assert backend.break_lock(lock_name(HOT))
    other = Lock(HOT)
    assert other.acquire(blocking=False)
    backend.set_note(lock_name(HOT), b"the other holder's note")
    bump(conn)
    transaction.commit()
    assert backend.get_note(lock_name(HOT)) == b"the other holder's note"
    assert holder() is not None  # the other holder's lock was left alone
    other.release()


def test_commit_without_writes_keeps_the_previous_note(db, conn):
    transaction.begin()
    lock_for_transaction(HOT)
    bump(conn)
    transaction.commit()
    recorded = note(db)
    transaction.begin()
    lock_for_transaction(HOT)
    conn.root()["counter"]["value"]
    transaction.commit()
    assert holder() is None
    assert note(db) == recorded


def test_abort_releases_without_a_note(db, conn):
    transaction.begin()
    seen = take_and_watch()
    bump(conn)
    transaction.abort()
    assert seen == [("abort", True)]
    assert holder() is None
    assert note(db) is None


def test_begin_over_an_open_transaction_releases(db, conn):
    transaction.begin()
    seen = take_and_watch()
    bump(conn)
    transaction.begin()
    assert seen == [("abort", True)]
    assert holder() is None
    assert conn.root()["counter"]["value"] == 0


def test_failed_commit_releases_at_once_and_the_abort_after_it_is_harmless(db, conn):
    with transaction.manager:  # the key's note reaches back to the next view: the rival's commit is not under it
        take_and_watch()
        bump(conn)
    tm = transaction.TransactionManager()
    rival = db.open(transaction_manager=tm)
    transaction.begin()
    conn.root()["counter"]["value"]
    rival.root()["counter"]["value"] = 100
    tm.commit()
    seen = take_and_watch()
    conn.root()["counter"]["value"] = 1
    with pytest.raises(ConflictError):
        transaction.commit()
    assert seen == [("commit", False, True)]
    assert holder() is None
    assert note(db) < db.lastTransaction()  # the failed commit recorded nothing
    transaction.abort()
    assert seen == [("commit", False, True), ("abort", True)]
    assert holder() is None
    rival.close()


def test_conflict_in_a_before_commit_hook_releases_on_abort(db, conn):
    def conflicting_hook():
        raise ConflictError(message="raised by a before-commit hook")

    transaction.begin()
    seen = take_and_watch()
    bump(conn)
    transaction.get().addBeforeCommitHook(conflicting_hook)
    with pytest.raises(ConflictError):
        transaction.commit()
    assert seen == []
    assert holder() is not None
    transaction.abort()
    assert seen == [("abort", True)]
    assert holder() is None
    assert note(db) is None


def test_savepoints_keep_working_and_a_rollback_keeps_the_lock_until_the_end(db, conn):
    transaction.begin()
    before = transaction.savepoint()
    seen = take_and_watch()
    bump(conn)
    inner = transaction.savepoint()
    conn.root()["counter"]["value"] = 50
    inner.rollback()
    assert conn.root()["counter"]["value"] == 1
    before.rollback()
    assert conn.root()["counter"]["value"] == 0
    assert holder() is not None
    assert lock_for_transaction(HOT) is True
    bump(conn)
    transaction.commit()
    assert seen == [("commit", True, True)]
    assert holder() is None
    with db.transaction() as check:
        assert check.root()["counter"]["value"] == 1


def test_reentry_in_one_transaction_takes_the_lock_once(db, conn):
    calls = []

    @zlock(lambda fun, n: "counter")
    def add(n):
        calls.append(n)
        if n:
            add(n - 1)

    name = lock_name(function_prefix(add.__wrapped__) + "counter")
    transaction.begin()
    add(3)
    first = get_backend().holder(name)
    assert first is not None
    add(2)
    assert lock_for_transaction(function_prefix(add.__wrapped__) + "counter") is True
    assert get_backend().holder(name).token == first.token
    assert calls == [3, 2, 1, 0, 2, 1, 0]
    transaction.abort()
    assert get_backend().holder(name) is None


def test_outside_a_zodb_transaction_the_lock_is_held_for_the_call_only(store):
    transaction.abort()
    seen = []

    @zlock(lambda fun, depth: "plain")
    def work(depth):
        name = lock_name(function_prefix(work.__wrapped__) + "plain")
        seen.append(get_backend().holder(name) is not None)
        if depth:
            work(depth - 1)
        return name

    name = work(2)
    assert seen == [True, True, True]
    assert get_backend().holder(name) is None
    assert lock_for_transaction("plain") is False
    transaction.abort()


def test_dont_lock_calls_unlocked(db, conn):
    def no_key(fun):
        raise memcachedlock.DontLock()

    @zlock(no_key)
    def work():
        return get_backend().list_locks()

    transaction.begin()
    assert work() == []
    transaction.abort()


def run_in_thread(target, *args):
    """Run ``target`` in a real thread; return (thread, result box)."""
    box: dict = {}

    def run():
        try:
            box["result"] = target(*args)
        except BaseException as exc:  # reported to the test thread
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def test_busy_lock_is_reserved_and_the_retry_adopts_it_without_waiting(db):
    """Thread B waits while A holds the lock, finds its view stale, gets LockBusy
    with the lock reserved; its retry sees A's commit and runs without waiting."""
    a_holds = threading.Event()
    a_may_commit = threading.Event()
    b_began = threading.Event()
    log: list = []

    def writer_a():
        connection = db.open()
        transaction.begin()
        b_began.wait(10)
        lock_for_transaction(HOT)
        bump(connection)
        a_holds.set()
        a_may_commit.wait(10)
        transaction.commit()
        connection.close()

    def writer_b():
        connection = db.open()
        transaction.begin()
        connection.root()["counter"]["value"]
        b_began.set()
        a_holds.wait(10)
        try:
            lock_for_transaction(HOT)
        except LockBusy as exc:
            log.append(("busy", str(exc), holder()))
        else:
            log.append(("ran without retry",))
        transaction.abort()
        assert holder() is not None and holder().thread == threading.get_ident()
        reserved = holder().token
        for attempt in transaction.manager.attempts(3):
            with attempt:
                started = time.monotonic()
                lock_for_transaction(HOT)
                log.append(("adopted", holder().token == reserved, time.monotonic() - started))
                bump(connection)
        connection.close()

    ta, box_a = run_in_thread(writer_a)
    tb, box_b = run_in_thread(writer_b)
    a_holds.wait(10)
    time.sleep(0.2)
    a_may_commit.set()
    ta.join(20)
    tb.join(20)
    assert "error" not in box_a and "error" not in box_b, (box_a, box_b)
    assert log[0][0] == "busy" and HOT in log[0][1]
    assert log[0][2].thread == tb.ident
    # adopted (the reserved token) without waiting: a wait would last until LockBusy, MEMCACHEDLOCK_TXN_WAIT
    # (5 s by default); the bound leaves a loaded machine 2.5 s for the acquisition's few store requests
    assert log[1][0] == "adopted" and log[1][1] is True and log[1][2] < 2.5
    assert len(log) == 2
    assert holder() is None
    with db.transaction() as check:
        assert check.root()["counter"]["value"] == 2


def test_no_busy_when_the_view_already_contains_the_last_commit(db, conn):
    """A transaction that began after another thread's commit under the lock runs at once."""

    def commit_elsewhere():
        connection = db.open()
        transaction.begin()
        lock_for_transaction(HOT)
        bump(connection)
        transaction.commit()
        connection.close()

    thread, box = run_in_thread(commit_elsewhere)
    thread.join(10)
    assert "error" not in box and note(db) == db.lastTransaction()
    transaction.begin()
    assert lock_for_transaction(HOT) is True
    assert conn.root()["counter"]["value"] == 1
    transaction.abort()


def make_busy(db, key=HOT):
    """Leave this thread with an unclaimed reservation of ``key``: a commit made
    under the lock after this thread's transaction began."""
    mine = db.open()
    transaction.begin()
    mine.root()["counter"]["value"]

    def commit_elsewhere():
        connection = db.open()
        transaction.begin()
        lock_for_transaction(key)
        bump(connection)
        transaction.commit()
        connection.close()

    thread, box = run_in_thread(commit_elsewhere)
    thread.join(10)
    assert "error" not in box
    with pytest.raises(LockBusy):
        lock_for_transaction(key)
    transaction.abort()
    assert holder(key).thread == threading.get_ident()
    return mine


def test_unclaimed_reservation_is_freed_by_the_next_transaction(db):
    mine = make_busy(db)
    transaction.begin()
    bump(mine)
    assert holder() is not None
    transaction.commit()
    assert holder() is None
    mine.close()


@pytest.mark.slow
def test_unclaimed_reservation_expires_without_another_transaction(db):
    mine = make_busy(db)
    started = time.monotonic()
    while holder() is not None and time.monotonic() - started < 10:
        time.sleep(0.05)
    waited = time.monotonic() - started
    assert holder() is None
    assert zlock_module.RESERVE_FOR - 0.5 <= waited <= zlock_module.RESERVE_FOR + 3, waited
    transaction.begin()
    assert lock_for_transaction(HOT) is True
    transaction.abort()
    mine.close()


def test_wait_in_a_transaction_is_bounded_and_raises_lock_busy(db, conn):
    blocker = memcachedlock.lock_getter(HOT, timeout=30)
    blocker.acquire()
    try:
        transaction.begin()
        started = time.monotonic()
        with pytest.raises(LockBusy, match=HOT) as info:
            lock_for_transaction(HOT, wait=0.3)
        assert time.monotonic() - started < 2
        assert not info.value.reserved and "lease 30s" in str(info.value)
        transaction.abort()
    finally:
        blocker.release()


def test_notes_round_trip_and_foreign_notes_are_ignored():
    tids = {"main": b"\x03" * 8, "cat alog": b"\x00" * 7 + b"\x09"}
    assert decode_note(encode_note(tids)) == tids
    assert decode_note(None) == {}
    assert decode_note(b"something else") == {}
    assert decode_note(b"zlock2 main=zz x=0102") == {}


def test_a_note_keeps_the_entries_written_last_and_stays_bounded():
    count = MAX_NOTE_ENTRIES + 14
    old = {"zeo:gone-%d" % n: bytes([0] * 7 + [n]) for n in range(count)}
    merged = merge_note(old, {"zeo:gone-3": b"\x09" * 8, "new": b"\x01" * 8})
    assert len(merged) == MAX_NOTE_ENTRIES
    assert list(merged)[-2:] == ["zeo:gone-3", "new"] and merged["zeo:gone-3"] == b"\x09" * 8
    assert list(merged)[:-2] == ["zeo:gone-%d" % n for n in range(count - MAX_NOTE_ENTRIES + 2, count)]
    # other processes' local storages go first, then the oldest of the rest
    mine = storage_identity(type("Conn", (), {"db": lambda self: type("DB", (), {"storage": object()})()})())
    others = {"local:elsewhere:1:%d" % n: b"\x01" * 8 for n in range(4)}
    old = {"zeo:main": b"\x01" * 8, "exclusive:local:elsewhere:2:1": b"\x01" * 8, mine: b"\x01" * 8, **others,
           **{"zeo:gone-%d" % n: b"\x01" * 8 for n in range(MAX_NOTE_ENTRIES - 6)}}
    merged = merge_note(old, {"zeo:new": b"\x02" * 8, "zeo:newer": b"\x02" * 8})
    assert len(merged) == MAX_NOTE_ENTRIES
    assert "zeo:main" in merged and mine in merged and "exclusive:local:elsewhere:2:1" not in merged
    elsewhere = [name for name in merged if name.startswith("local:elsewhere")]
    assert elsewhere == ["local:elsewhere:1:2", "local:elsewhere:1:3"]
    # appended entries: a name written again moves to the end, its highest tid kept
    assert list(decode_note(b" a=0000000000000002 b=0000000000000001 a=0000000000000001").items()) == [
        ("b", b"\x00" * 7 + b"\x01"), ("a", b"\x00" * 7 + b"\x02")]


def test_storages_that_come_and_go_do_not_grow_the_note(store):
    """Each process's temporary storage has an identity of its own: the note keeps the latest ones."""
    transaction.abort()
    databases = []  # kept open: a storage's identity includes id(storage)
    for _ in range(MAX_NOTE_ENTRIES // 3 + 4):  # three entries per storage (policy always: last, exclusive, since)
        database = ZODB.DB(MappingStorage())
        databases.append(database)
        with database.transaction() as conn:
            conn.root()["x"] = 1
        conn = database.open()
        transaction.begin()
        assert lock_for_transaction(HOT, policy="always") is True
        conn.root()["x"] = 2
        transaction.commit()
        conn.close()
        stored = decode_note(get_backend().get_note(lock_name(HOT)))
        assert stored[storage_identity(conn)] == database.lastTransaction()
    assert MAX_NOTE_ENTRIES - 3 < len(stored) <= MAX_NOTE_ENTRIES
    for database in databases:
        database.close()


@pytest.mark.parametrize("storage", ["mapping", "file"])
def test_threads_nothing_lost_and_no_work_in_failed_transactions(store, tmp_path, storage):
    """4 threads x 15 writes under policy ``always``: the locked function runs exactly once per commit,
    the counter ends exact and holders never overlap (on the file store, notes kept next to the locks).

    Not under the default ``adaptive``: that policy may try a key optimistically (a trial after
    ``PROBE_AFTER`` locked transactions), and optimistic writers do overlap and retry."""
    run_threads_test(tmp_path, storage)


def run_threads_test(tmp_path, storage: str) -> None:
    transaction.abort()
    database = ZODB.DB(MappingStorage() if storage == "mapping" else FileStorage(str(tmp_path / "Data.fs")))
    with database.transaction() as c:
        c.root()["counter"] = PersistentMapping(value=0)
    overlap = OverlapLog(tmp_path / "overlap.log")
    executions = []
    commits = []
    seen = []

    @zlock(lambda fun, connection: "counter", policy="always")
    def locked_bump(connection):
        who = threading.current_thread().name
        overlap.enter("counter", who)
        transaction.get().addAfterCommitHook(lambda ok: commits.append(ok))
        executions.append(who)
        counter = connection.root()["counter"]
        seen.append(counter["value"])
        time.sleep(0.003)
        counter["value"] += 1

    def worker():
        connection = database.open()
        for _ in range(15):
            for attempt in transaction.manager.attempts(50):
                with attempt:
                    me = threading.current_thread().name
                    transaction.get().addAfterCommitHook(
                        lambda ok, who=me: overlap.exit("counter", who)
                        if executions and executions[-1] == who else None
                    )
                    locked_bump(connection)
        connection.close()

    threads = [threading.Thread(target=worker, name="w%d" % i) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    with database.transaction() as c:
        assert c.root()["counter"]["value"] == 60
    database.close()
    assert len(executions) == 60 and commits == [True] * 60
    assert sorted(seen) == list(range(60))
    assert overlap.violations() == []


class Counter(PersistentMapping):
    """A persistent object with a zlocked method, as the ZCML directive locks one."""

    @zlock(lambda fun, self: "own-manager")
    def bump(self) -> None:
        self["value"] += 1


def test_a_connection_with_its_own_transaction_manager_holds_the_lock_for_its_transaction(db):
    """zlock finds the transaction through the object it is called on; lock_for_transaction is told."""
    manager = transaction.TransactionManager()
    connection = db.open(transaction_manager=manager)
    try:
        with manager:
            connection.root()["own"] = Counter(value=0)
        manager.begin()
        connection.root()["own"].bump()
        name = lock_name(function_prefix(Counter.bump.__wrapped__) + "own-manager")
        assert get_backend().holder(name) is not None  # held after the call: until the commit
        manager.commit()
        assert get_backend().holder(name) is None
        manager.begin()
        assert lock_for_transaction("told", transaction_manager=manager) is True
        assert holder("told") is not None
        assert lock_for_transaction("told") is False  # the thread's own manager has no connection here
        manager.abort()
        assert holder("told") is None
    finally:
        manager.abort()
        connection.close()


def test_threads_with_their_own_transaction_managers_lose_nothing(db):
    """4 threads, each with a TransactionManager of its own, x 10 increments of one counter."""
    with db.transaction() as c:
        c.root()["own"] = Counter(value=0)
    conflicts = []

    def worker() -> None:
        manager = transaction.TransactionManager()
        connection = db.open(transaction_manager=manager)
        for _ in range(10):
            for _ in range(20):
                manager.begin()
                try:
                    connection.root()["own"].bump()
                    time.sleep(0.002)  # still held: the others wait instead of conflicting
                    manager.commit()
                    break
                except LockBusy:  # a cheap retry before any work: allowed
                    manager.abort()
                except ConflictError as exc:
                    manager.abort()
                    conflicts.append(exc)
        connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    with db.transaction() as c:
        assert c.root()["own"]["value"] == 40
    assert conflicts == []


def test_called_from_a_before_commit_hook_as_cmfcore_indexing_does(db, conn):
    """CMFCore's indexing queue catalogs from a before-commit hook, inside commit()."""
    ran = []

    @zlock(lambda fun, connection: "catalog")
    def catalog(connection):
        ran.append(holder(function_prefix(catalog.__wrapped__) + "catalog") is not None)
        bump(connection)

    transaction.begin()
    conn.root()["counter"]["title"] = "changed"
    transaction.get().addBeforeCommitHook(catalog, (conn,))
    transaction.commit()
    assert ran == [True]
    assert holder(function_prefix(catalog.__wrapped__) + "catalog") is None
    assert note(db, function_prefix(catalog.__wrapped__) + "catalog") == db.lastTransaction()
    with db.transaction() as check:
        assert check.root()["counter"]["value"] == 1


def test_lock_released_by_release_all_while_its_note_is_read_is_lock_busy(db):
    """A zlock whose lease another thread gives back (``release_all``) while the new holder still
    waits for the commit gate to drain is not held: LockBusy (retry), not an AttributeError on a
    missing lease."""
    backend = get_backend()
    name = lock_name(HOT)
    passing = backend.commit_gate.enter(name)  # an optimistic commit in the gate: the holder drains it
    assert passing is not None
    outcome: list = []

    def holder_thread():
        transaction.begin()
        connection = db.open()
        try:
            connection.root()["counter"]["value"]
            outcome.append(lock_for_transaction(HOT, policy="always"))
        except Exception as exc:
            outcome.append(exc)
        finally:
            transaction.abort()
            connection.close()

    thread = threading.Thread(target=holder_thread)
    thread.start()
    deadline = time.monotonic() + 5
    while not backend.held_leases() and time.monotonic() < deadline:  # not holder(): a file store
        time.sleep(0.005)  # shows the flock before the lease that owns it is counted as held
    assert holder() is not None
    assert backend.release_all() == 1
    passing.leave()
    thread.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], LockBusy), outcome
    assert holder() is None
