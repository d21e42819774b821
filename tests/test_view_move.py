"""zlock ``always``: a stale view is moved forward in place when nothing used before the lock changed.

Two real ZEO clients of one real ZEO server, memcached as the lock store.
The "waiter" begins its transaction, may use or change objects, then
another client commits under the lock; the waiter's locked call then either
moves its view forward (no retry, the other commit seen) or raises LockBusy
(the lock reserved; its retry sees the commit).  Every case is decided by
what the waiter used before the lock, as docs/zlock.rst says.
"""

from __future__ import annotations

import sys
import threading

import pytest
import transaction
import ZEO
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping

from unimr.memcachedlock import metrics
from unimr.memcachedlock.zodb import LockBusy, zlock
from unimr.memcachedlock.zodb.viewmove import MARKER_OID, used_since_view_began

from clients import in_another_client

KEY = "view-refresh-counter"


@zlock(lambda fun, root: KEY)
def bump(root) -> int:
    """The locked work: read the counter under the lock and increment it."""
    counter = root["counter"]
    counter["value"] += 1
    return counter["value"]


def other_client_bumps(address, also=None) -> None:
    """Another ZEO client commits one locked increment (and optionally a change of ``also``)."""
    def work(root) -> None:
        bump(root)
        if also:
            root[also]["value"] += 1

    in_another_client(address, work)


@pytest.fixture
def waiter(memcached, zeo_server):
    """The waiting client's connection, after one locked transaction (zlock's marks are in place)."""
    metrics.reset()
    db = ZEO.DB(zeo_server.address)
    conn = db.open()
    with transaction.manager:
        root = conn.root()
        root["counter"] = OOBTree({"value": 0})       # a BTree: the move can tell whether it was read
        root["other"] = PersistentMapping(value=0)
        root["shared"] = OOBTree({"value": 0})
    with transaction.manager:
        bump(conn.root())
    yield conn
    transaction.abort()
    conn.close()
    db.close()


def moves() -> tuple[int, int]:
    """(views moved, LockBusy retries) of the test's key, in this process."""
    data = metrics.snapshot().get("%s.bump" % __name__, {})
    return int(data.get("view_moves", 0)), int(data.get("busy_retries", 0))


def value(conn, name: str) -> int:
    transaction.begin()
    try:
        return conn.root()[name]["value"]
    finally:
        transaction.abort()


def test_a_waiter_that_used_nothing_changed_moves_its_view_instead_of_retrying(waiter, zeo_server):
    transaction.begin()
    root = waiter.root()
    assert root["other"]["value"] == 0          # used before the lock, not changed by the other client
    root["other"]["value"] = 5                  # changed before the lock, not by the other client
    other_client_bumps(zeo_server.address)      # counter: 1 -> 2, committed under the lock
    assert bump(root) == 3                      # no LockBusy: the view moved, the counter read fresh
    transaction.commit()
    assert moves() == (1, 0)
    assert value(waiter, "counter") == 3 and value(waiter, "other") == 5


def test_an_object_used_before_the_lock_and_changed_since_is_a_retry(waiter, zeo_server):
    transaction.begin()
    root = waiter.root()
    seen = root["counter"]["value"]             # the read a lost update would come from
    other_client_bumps(zeo_server.address)
    with pytest.raises(LockBusy, match="changed an object it used before the lock") as info:
        bump(root)
    assert info.value.reserved
    transaction.abort()
    assert seen == 1 and moves() == (0, 1)
    with transaction.manager:                   # the retry adopts the lock and sees the commit
        assert bump(waiter.root()) == 3


def test_an_object_changed_before_the_lock_and_by_a_newer_commit_is_a_retry(waiter, zeo_server):
    transaction.begin()
    root = waiter.root()
    root["shared"]["value"] = 10                # changed here before the lock ...
    other_client_bumps(zeo_server.address, also="shared")  # ... and by the newer commit
    with pytest.raises(LockBusy, match="changed an object it used before the lock"):
        bump(root)
    transaction.abort()
    assert moves() == (0, 1)


def test_read_current_counts_as_used(waiter, zeo_server):
    transaction.begin()
    root = waiter.root()
    counter = root["counter"]
    counter._p_deactivate()                     # a ghost: not used, but asked to stay current
    waiter.readCurrent(counter)
    other_client_bumps(zeo_server.address)
    with pytest.raises(LockBusy):
        bump(root)
    transaction.abort()


def test_a_savepoint_before_the_lock_keeps_its_changes(waiter, zeo_server):
    transaction.begin()
    root = waiter.root()
    root["other"]["value"] = 7
    transaction.savepoint()
    other_client_bumps(zeo_server.address)
    assert bump(root) == 3
    transaction.commit()
    assert moves() == (1, 0)
    assert value(waiter, "other") == 7 and value(waiter, "counter") == 3


def test_a_minimized_cache_makes_what_was_used_unknown(waiter, zeo_server):
    transaction.begin()
    root = waiter.root()
    root["other"]["value"]
    waiter.cacheMinimize()
    assert used_since_view_began(waiter) is None
    other_client_bumps(zeo_server.address)
    with pytest.raises(LockBusy, match="what it used so far is unknown"):
        bump(root)
    transaction.abort()


def test_the_order_of_use_is_what_the_marker_splits(waiter):
    transaction.begin()
    root = waiter.root()
    assert waiter._cache.get(MARKER_OID) is not None
    root["other"]["value"]
    used = used_since_view_began(waiter)
    assert root["other"]._p_oid in used and root._p_oid in used
    assert root["counter"]._p_oid not in used   # in the cache from the last transaction, not used in this one
    transaction.abort()
    transaction.begin()                         # a new view: nothing used yet
    assert used_since_view_began(waiter) == set()
    transaction.abort()


class InterruptOnce(set):
    """The storage instance's received invalidations, whose emptying is interrupted once."""

    def difference_update(self, *others):
        if not getattr(self, "interrupted", False):
            self.interrupted = True
            raise KeyboardInterrupt("interrupted while the view moves")
        return set.difference_update(self, *others)


@pytest.mark.parametrize("where", ["before the move", "after the view moved"])
def test_an_interrupted_move_leaves_no_stale_object_behind(waiter, zeo_server, monkeypatch, where):
    """Whatever step an interrupt hits, the next transaction sees every object as committed."""
    from unimr.memcachedlock.zodb import private as zodbprivate

    transaction.begin()
    root = waiter.root()
    assert root["counter"]._p_changed is False  # in the cache from the last transaction, not used in this one
    other_client_bumps(zeo_server.address)      # counter: 1 -> 2
    storage = zodbprivate.normal_storage(waiter)
    if where == "before the move":
        real = waiter.db().storage.lastTransaction
        calls = []

        def last_transaction():
            if sys._getframe(1).f_code.co_name == "_move" and not calls:  # the changed objects are ghosts now
                calls.append(1)
                raise KeyboardInterrupt("interrupted before the move")
            return real()

        monkeypatch.setattr(waiter.db().storage, "lastTransaction", last_transaction)
    else:
        storage._invalidations = InterruptOnce(storage._invalidations)
    with pytest.raises(KeyboardInterrupt):
        bump(root)
    transaction.abort()
    monkeypatch.undo()
    assert value(waiter, "counter") == 2         # not the cached 1
    other_client_bumps(zeo_server.address)      # the lock was released: counter 2 -> 3
    with transaction.manager:
        assert bump(waiter.root()) == 4


def test_a_thread_that_never_used_zlock_never_moves_its_view(memcached, zeo_server):
    """Its transaction began before zlock was watching: what it used is unknown, so a retry.

    ``registerSynch`` calls a new synchronizer's ``newTransaction`` for the
    transaction in progress; zlock must not take that for a view's beginning
    (the counter read before the lock would then look unused: a lost update).
    """
    db = ZEO.DB(zeo_server.address)
    with db.transaction() as conn:
        conn.root()["counter"] = OOBTree({"value": 0})
    outcome: list = []

    def fresh_thread() -> None:
        conn = db.open()
        try:
            transaction.begin()
            root = conn.root()
            seen = root["counter"]["value"]
            other_client_bumps(zeo_server.address)
            try:
                bump(root)
                outcome.append("moved after reading %d" % seen)
            except LockBusy as exc:
                outcome.append(str(exc))
        finally:
            transaction.abort()
            conn.close()

    thread = threading.Thread(target=fresh_thread)
    thread.start()
    thread.join(30)
    db.close()
    assert len(outcome) == 1 and "what it used so far is unknown" in outcome[0], outcome


def test_a_failing_prefetch_does_not_fail_the_move(waiter, zeo_server, monkeypatch):
    """The prefetch only saves round trips: if ZEO refuses it, the loads fetch what they need."""
    def refuse(*oids):
        raise ConnectionError("ZEO went away for a moment")

    monkeypatch.setattr(waiter, "prefetch", refuse)
    transaction.begin()
    root = waiter.root()
    other_client_bumps(zeo_server.address)
    assert bump(root) == 3
    transaction.commit()
    assert moves() == (1, 0)


def test_a_client_that_must_drop_its_cache_retries(waiter, zeo_server):
    """ZEO tells a reconnected client with too old a cache to drop it (invalidations unknown): no move."""
    from unimr.memcachedlock.zodb import private as zodbprivate

    transaction.begin()
    root = waiter.root()
    other_client_bumps(zeo_server.address)
    zodbprivate.normal_storage(waiter)._invalidateCache()  # what DB.invalidateCache does after a stale reconnect
    with pytest.raises(LockBusy, match="its view cannot be moved"):
        bump(root)
    transaction.abort()
    with transaction.manager:  # the retry begins on a fresh view (the whole cache dropped)
        assert bump(waiter.root()) == 3
